package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
	"github.com/straitmesh/strait/internal/wan"
)

// Two real sites on loopback, each with a real gateway. Site B's gateway
// is reached through a tap (a real TCP proxy) that records every byte
// crossing between the gateways.

type site struct {
	*controlplanetest.Cluster
	gw      *gateway.Gateway
	reg     *prometheus.Registry
	stopGW  context.CancelFunc
	gwDone  chan error
	gwDir   string
	wanAddr string
}

// vipRange is a /24 of 127.0.0.0/8 of this test run, so that parallel
// test processes never bind the same virtual IP.
var vipRange = fmt.Sprintf("127.%d.%d.0/24", 200+rand.IntN(50), rand.IntN(250))

func startSite(t *testing.T, name string, w *wan.WAN) *site {
	t.Helper()
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: name, BundleEndpoint: true, DNS: true, InMemoryRaft: true,
		Tweak: func(c *controlplane.Config) {
			c.PeerDialer = w.Dial
			c.PeerHeartbeat, c.PeerStaleAfter = 100*time.Millisecond, time.Second
			c.VirtualIPCIDR = vipRange
		}})
	return &site{Cluster: c}
}

// startGateway joins a gateway to s and runs it; with tap, peers reach it
// through a recording proxy.
func (s *site) startGateway(t *testing.T, name string, tap func([]byte)) {
	t.Helper()
	ctx := controlplanetest.Ctx(t)
	if s.gwDir == "" {
		s.gwDir = t.TempDir()
	}
	tok, err := s.Client(0).ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_GATEWAY, MaxUses: 1})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	advertise := ln.Addr().String()
	if tap != nil {
		p, err := wan.NewProxy(advertise, 0)
		if err != nil {
			t.Fatal(err)
		}
		p.SetTap(tap)
		t.Cleanup(func() { p.Close() })
		advertise = p.Addr()
	}
	s.reg = prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("STRAIT_TEST_LOGS") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("site", name)
	}
	gw, err := gateway.New(gateway.Config{Name: name, Servers: []string{s.Nodes[0].Addr}, DataDir: s.gwDir, JoinToken: tok.Secret,
		WANListener: ln, AdvertiseWAN: advertise, HeartbeatInterval: 200 * time.Millisecond, DrainTimeout: 2 * time.Second,
		Registerer: s.reg, Gatherer: s.reg, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithCancel(context.Background())
	s.gw, s.stopGW, s.gwDone, s.wanAddr = gw, cancel, make(chan error, 1), advertise
	go func() { s.gwDone <- gw.Run(gctx) }()
	t.Cleanup(func() { cancel(); <-s.gwDone })
	select {
	case <-gw.Ready():
	case err := <-s.gwDone:
		t.Fatalf("gateway exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("gateway not ready within 20s")
	}
}

func federate(t *testing.T, a, b *site) {
	t.Helper()
	ctx := controlplanetest.Ctx(t)
	inv, err := a.Client(0).Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client(0).Federation.Join(ctx, &apipb.JoinFederationRequest{Token: inv.Token}); err != nil {
		t.Fatal(err)
	}
}

// echoServer echoes lines; it stands for a TCP service in site B.
func echoServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func register(t *testing.T, s *site, ns, svc, id string, port int, proto apipb.Protocol) {
	t.Helper()
	_, err := s.Client(0).Catalog.Register(controlplanetest.Ctx(t), &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: ns, Name: svc, Ports: []*apipb.ServicePort{{Name: "main", Protocol: proto}}},
		Instance: &apipb.Instance{Id: id, Address: "127.0.0.1", Ports: map[string]uint32{"main": uint32(port)}},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// resolve asks site s's mesh DNS for name's A record.
func resolve(t *testing.T, s *site, name string) (string, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	r, _, err := (&mdns.Client{Timeout: 2 * time.Second}).Exchange(m, s.Nodes[0].DNSAddr)
	if err != nil {
		return "", err
	}
	if len(r.Answer) != 1 {
		return "", fmt.Errorf("%s: %d answers", name, len(r.Answer))
	}
	return r.Answer[0].(*mdns.A).A.String(), nil
}

// echo sends a line through addr and returns what comes back.
func echo(addr, line string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

type recorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recorder) tap(b []byte) { r.mu.Lock(); r.buf.Write(b); r.mu.Unlock() }
func (r *recorder) seen() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

func TestTrafficBetweenSitesThroughGateways(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b := startSite(t, "site-a", w), startSite(t, "site-b", w)
	federate(t, a, b)
	rec := &recorder{}
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", rec.tap)
	ctx := controlplanetest.Ctx(t)

	// Site B: a TCP echo service and an HTTP service, exported to A.
	echoPort := echoServer(t)
	register(t, b, "payments", "api", "api-1", echoPort, apipb.Protocol_PROTOCOL_TCP)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from site-b") })}
	hln, _ := net.Listen("tcp", "127.0.0.1:0")
	go hs.Serve(hln)
	t.Cleanup(func() { hs.Close() })
	register(t, b, "payments", "web", "web-1", hln.Addr().(*net.TCPAddr).Port, apipb.Protocol_PROTOCOL_HTTP)
	for _, svc := range []string{"api", "web"} {
		if _, err := b.Client(0).Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "payments", Service: svc, To: []string{"site-a"}}}); err != nil {
			t.Fatal(err)
		}
	}

	// In A, the name resolves to a virtual IP that A's gateway listens on.
	var vip string
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		var err error
		vip, err = resolve(t, a, "api.payments.site-b.mesh")
		return err
	})
	addr := net.JoinHostPort(vip, strconv.Itoa(echoPort))
	// Without an intention, site B refuses: the connection closes.
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		got, err := echo(addr, "before")
		if err == nil {
			return fmt.Errorf("got %q without an intention", got)
		}
		if testutil.ToFloat64(b.gwDenials()) == 0 {
			return fmt.Errorf("not refused by B's gateway yet: %v", err)
		}
		return nil
	})
	// With one, it passes.
	if _, err := b.Client(0).Intentions.Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{
		Source: "site-a", Destination: "payments/*", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW}}); err != nil {
		t.Fatal(err)
	}
	canary := fmt.Sprintf("CANARY-%d-PLAINTEXT", rand.Int64())
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		got, err := echo(addr, canary)
		if err != nil {
			return err
		}
		if got != canary+"\n" {
			return fmt.Errorf("echo %q", got)
		}
		return nil
	})
	// An unmodified HTTP client, by name.
	webVIP, err := resolve(t, a, "web.payments.site-b.mesh")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + net.JoinHostPort(webVIP, strconv.Itoa(hln.Addr().(*net.TCPAddr).Port)) + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from site-b" {
		t.Fatalf("HTTP through the gateways: %q", body)
	}
	// Everything between the gateways was TLS: the canary never crossed
	// in the clear, though bytes did cross.
	seen := rec.seen()
	if len(seen) < 1000 {
		t.Fatalf("only %d bytes crossed between the gateways", len(seen))
	}
	if bytes.Contains(seen, []byte("CANARY")) || bytes.Contains(seen, []byte("hello from site-b")) {
		t.Fatal("plaintext crossed between the gateways")
	}
	// Many connections share one tunnel: no handshake per connection.
	for i := range 20 {
		if _, err := echo(addr, fmt.Sprint("again-", i)); err != nil {
			t.Fatal(err)
		}
	}
	if hs := testutil.ToFloat64(a.metric(t, "strait_gateway_tunnel_handshakes_total")); hs > 2 {
		t.Fatalf("%v tunnel handshakes for 22 connections", hs)
	}
}

func (s *site) gwDenials() prometheus.Collector {
	return &sumOf{s.reg, "strait_gateway_authorization_denials_total"}
}

func (s *site) metric(t *testing.T, name string) prometheus.Collector {
	return &sumOf{s.reg, name}
}

// sumOf is a collector summing every series of a metric family.
type sumOf struct {
	g    prometheus.Gatherer
	name string
}

func (s *sumOf) Describe(ch chan<- *prometheus.Desc) {
	ch <- prometheus.NewDesc(s.name+"_sum_of_series", "test", nil, nil)
}

func (s *sumOf) Collect(ch chan<- prometheus.Metric) {
	total := 0.0
	fams, _ := s.g.Gather()
	for _, f := range fams {
		if f.GetName() != s.name {
			continue
		}
		for _, m := range f.Metric {
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(s.name+"_sum_of_series", "test", nil, nil), prometheus.GaugeValue, total)
}
