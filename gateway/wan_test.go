package gateway_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
	"github.com/straitmesh/strait/internal/acceptloop/acceptlooptest"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/sitetest"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/mtls"
)

// wanGateway is a gateway started for the WAN tests: its WAN listener can
// be wrapped (to inject accept errors) and its config adjusted.
type wanGateway struct {
	gw   *gateway.Gateway
	reg  *prometheus.Registry
	addr string
	done chan error
}

func startWANGateway(t *testing.T, s *site, name string, wrap func(net.Listener) net.Listener, tweak func(*gateway.Config)) *wanGateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if wrap != nil {
		ln = wrap(ln)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("STRAIT_TEST_LOGS") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("gateway", name)
	}
	w := &wanGateway{reg: prometheus.NewRegistry(), addr: addr}
	cfg := gateway.Config{Name: name, WANListener: ln, HeartbeatInterval: 200 * time.Millisecond, DrainTimeout: time.Second,
		HandshakeTimeout: 5 * time.Second, RenewCheck: time.Minute, TunnelsPerPeer: 1,
		Registerer: w.reg, Gatherer: w.reg, Logger: logger}
	if tweak != nil {
		tweak(&cfg)
	}
	g := sitetest.StartGateway(t, s.Cluster, cfg)
	w.gw, w.done = g.Gateway, g.Done
	return w
}

// value is the value of metric name with the labels given (0 if none).
func (w *wanGateway) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	fams, err := w.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.Metric {
			have := map[string]string{}
			for _, l := range m.Label {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// serversTLS is what a peer's server offers the passthrough: SNI
// servers.<td>, gRPC, verifying a server SVID of s.
func serversTLS(s *site, protos ...string) *tls.Config {
	srv := s.Nodes[0].Server
	td := srv.TrustDomain()
	ident := mtls.NewIdentity(srv.Bundle(), nil)
	c := mtls.ClientConfig(ident, func(id spiffeid.ID) error {
		if !trust.IsServer(id, td) {
			return fmt.Errorf("%s is not a server", id)
		}
		return nil
	}, protos...)
	c.ServerName = meshname.ServersSNI(td.Name())
	return c
}

// dialPassthrough completes TLS with a server of s through the gateway at
// addr, from the local address given.
func dialPassthrough(s *site, addr, local string, protos ...string) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{NetDialer: d, Config: serversTLS(s, protos...)}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

// TestWANAcceptSurvivesEMFILE: the WAN listener fails with EMFILE three
// times (descriptors exhausted: a fault a shared test process cannot cause
// for real; internal/acceptloop's TestRealFDExhaustion does, in a child
// process). The gateway keeps accepting: a peer's server reaches the
// site's servers through it, and the retries are counted. Before, the
// accept loop ended at the first error, and the gateway answered nothing
// while it kept heartbeating.
func TestWANAcceptSurvivesEMFILE(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a := startSite(t, "site-a", w)
	var flaky *acceptlooptest.Listener
	g := startWANGateway(t, a, "gw-a", func(ln net.Listener) net.Listener {
		flaky = acceptlooptest.Failing(ln, 3, syscall.EMFILE)
		return flaky
	}, nil)
	c, err := dialPassthrough(a, g.addr, "127.0.0.1", "h2")
	if err != nil {
		t.Fatalf("through the gateway after EMFILE: %v", err)
	}
	c.Close()
	if n := g.value(t, "strait_accept_retries_total", "listener", "wan", "cause", "fds"); n != 3 {
		t.Fatalf("%v retries counted, want 3", n)
	}
}

// TestWANListenerFailureStopsGateway (H3): when the WAN listener fails
// for good, the gateway stops with an error instead of heartbeating on as
// a black hole, so its instance goes critical and peers stop using it.
func TestWANListenerFailureStopsGateway(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a := startSite(t, "site-a", w)
	var flaky *acceptlooptest.Listener
	g := startWANGateway(t, a, "gw-a", func(ln net.Listener) net.Listener {
		flaky = acceptlooptest.Failing(ln, 0, nil)
		return flaky
	}, nil)
	passing := func() (bool, error) {
		resp, err := a.Client(0).Catalog.GetService(controlplanetest.Ctx(t), &apipb.GetServiceRequest{Namespace: "strait", Name: "gateway"})
		if err != nil {
			return false, err
		}
		for _, in := range resp.Instances {
			if in.Id == "gw-a" {
				return in.Health == apipb.Health_HEALTH_PASSING, nil
			}
		}
		return false, errors.New("gw-a is not in the catalog")
	}
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		if ok, err := passing(); !ok {
			return fmt.Errorf("gw-a not passing yet (%v)", err)
		}
		return nil
	})
	flaky.Fail(errors.New("wan listener broken"))
	// Wake the Accept in progress; the next one fails for good.
	if c, err := net.Dial("tcp", g.addr); err == nil {
		c.Close()
	}
	select {
	case err := <-g.done:
		if err == nil || !strings.Contains(err.Error(), "wan listener") {
			t.Fatalf("gateway ended with %v, want the wan listener's failure", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the gateway kept running with its WAN listener broken")
	}
	// No more heartbeats: the instance expires from passing.
	controlplanetest.WaitFor(t, 60*time.Second, func() error {
		if ok, _ := passing(); ok {
			return errors.New("gw-a still passing")
		}
		return nil
	})
}

// TestWANConnectionBounds (H1b): the WAN port admits a few connections
// per source address and in total, refusing (closing at once) and
// counting the rest; connections passed through to the servers that
// complete TLS and then idle are closed after the passthrough idle
// timeout.
func TestWANConnectionBounds(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a := startSite(t, "site-a", w)
	g := startWANGateway(t, a, "gw-a", nil, func(c *gateway.Config) {
		c.WANMaxConnections, c.WANMaxConnectionsPerSource = 5, 3
		c.PassthroughIdleTimeout = time.Second
		c.HandshakeTimeout = 20 * time.Second // silent connections stay while counted
	})
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	silent := func(local string) net.Conn {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		c, err := d.Dial("tcp", g.addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		return c
	}
	openIs := func(n float64) {
		t.Helper()
		controlplanetest.WaitFor(t, 10*time.Second, func() error {
			if v := g.value(t, "strait_gateway_wan_open_connections"); v != n {
				return fmt.Errorf("%v open, want %v", v, n)
			}
			return nil
		})
	}
	refused := func(local, cause string, want float64) {
		t.Helper()
		c := silent(local)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("from %s: admitted over the limit", local)
		}
		controlplanetest.WaitFor(t, 10*time.Second, func() error {
			if n := g.value(t, "strait_gateway_wan_connections_refused_total", "cause", cause); n != want {
				return fmt.Errorf("refused %s: %v, want %v", cause, n, want)
			}
			return nil
		})
	}
	for range 3 {
		silent("127.0.0.2")
	}
	openIs(3)
	refused("127.0.0.2", "max_connections_per_source", 1)
	silent("127.0.0.3")
	silent("127.0.0.3")
	openIs(5)
	refused("127.0.0.4", "max_connections", 1)
	for _, c := range held {
		c.Close()
	}
	held = nil
	openIs(0)

	// Three connections complete TLS with a server through the
	// passthrough, then say nothing: the gateway closes each after the
	// idle timeout.
	var idle []*tls.Conn
	for range 3 {
		c, err := dialPassthrough(a, g.addr, "127.0.0.2", "h2")
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
		held = append(held, c)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(idle))
	for _, c := range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err := io.ReadAll(c)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				errs <- errors.New("an idle passthrough connection was still open after 30s")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if n := g.value(t, "strait_gateway_passthrough_idle_closed_total"); n != 3 {
			return fmt.Errorf("%v idle closures counted, want 3", n)
		}
		return nil
	})
}

// TestPassthroughServesOnlyFederation (M7): through a gateway's WAN port
// (SNI servers.<td>), even a management token reaches nothing of the API
// but the federation methods; the same calls straight to a server work.
// Raft cannot be negotiated through it at all.
func TestPassthroughServesOnlyFederation(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a := startSite(t, "site-a", w)
	a.startGateway(t, "gw-a", nil)
	token := a.Token
	client := func(addr string) *grpc.ClientConn {
		t.Helper()
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(serversTLS(a, "h2"))),
			grpc.WithPerRPCCredentials(bearer(token)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	through, direct := client(a.wanAddr), client(a.Nodes[0].Addr)
	ctx := controlplanetest.Ctx(t)
	calls := []struct {
		name string
		call func(*grpc.ClientConn) error
	}{
		{"Operator.Status", func(c *grpc.ClientConn) error {
			_, err := apipb.NewOperatorClient(c).Status(ctx, &apipb.StatusRequest{})
			return err
		}},
		{"ACL.ListTokens", func(c *grpc.ClientConn) error {
			_, err := apipb.NewACLClient(c).ListTokens(ctx, &apipb.ListTokensRequest{})
			return err
		}},
		{"ACL.CreateToken", func(c *grpc.ClientConn) error {
			_, err := apipb.NewACLClient(c).CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_READ})
			return err
		}},
		{"Federation.CreateInvite", func(c *grpc.ClientConn) error {
			_, err := apipb.NewFederationClient(c).CreateInvite(ctx, &apipb.CreateInviteRequest{})
			return err
		}},
		{"Catalog.ListServices", func(c *grpc.ClientConn) error {
			_, err := apipb.NewCatalogClient(c).ListServices(ctx, &apipb.ListServicesRequest{})
			return err
		}},
	}
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(through)
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "not callable through a gateway") {
				t.Errorf("through the gateway: %v, want PermissionDenied (not callable through a gateway)", err)
			}
			if err := tc.call(direct); err != nil {
				t.Errorf("straight to a server: %v", err)
			}
		})
	}
	// Federation.Accept is open through it: a bogus invite is refused
	// for what it is, not for the way it came.
	_, err := apipb.NewFederationClient(through).Accept(ctx, &apipb.AcceptRequest{Site: "x", TrustDomain: "x.strait"})
	if err == nil || strings.Contains(err.Error(), "through a gateway") {
		t.Errorf("Federation.Accept through the gateway: %v, want refused for its token only", err)
	}
	// So is a peer's intention check (strait ping): without a peer's
	// server SVID it is refused as such, not for the way it came.
	_, err = apipb.NewIntentionsClient(through).CheckFromPeer(ctx, &apipb.CheckPeerIntentionRequest{})
	if err == nil || strings.Contains(err.Error(), "through a gateway") {
		t.Errorf("Intentions.CheckFromPeer through the gateway: %v, want refused for its caller only", err)
	}
	// Raft through the passthrough: the gateway closes it unrelayed.
	if c, err := dialPassthrough(a, a.wanAddr, "127.0.0.1", "strait-raft/1"); err == nil {
		c.Close()
		t.Error("Raft ALPN negotiated through the gateway")
	}
	if n := testutil.ToFloat64(a.metric(t, "strait_gateway_wan_connections_refused_total")); n != 1 {
		t.Errorf("%v refusals counted, want 1 (passthrough_alpn)", n)
	}
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }
