package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
	"github.com/straitmesh/strait/internal/wan"
)

func TestTrafficBetweenSitesThroughGateways(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b := startSite(t, "site-a", w), startSite(t, "site-b", w)
	federate(t, a, b)
	rec := &recorder{}
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", rec.tap)

	// Site B: a TCP echo service and an HTTP service, exported to A.
	echoPort := echoServer(t)
	register(t, b, "payments", "api", "api-1", echoPort, apipb.Protocol_PROTOCOL_TCP)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from site-b") })}
	hln, _ := net.Listen("tcp", "127.0.0.1:0")
	go hs.Serve(hln)
	t.Cleanup(func() { hs.Close() })
	register(t, b, "payments", "web", "web-1", hln.Addr().(*net.TCPAddr).Port, apipb.Protocol_PROTOCOL_HTTP)
	for _, svc := range []string{"api", "web"} {
		exportTo(t, b, "payments", svc, "site-a")
	}

	// In A, the name resolves to a virtual IP that A's gateway listens on.
	addr := resolvedAddr(t, a, "api.payments.site-b.mesh", echoPort, 15*time.Second)
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
	allow(t, b, "site-a", "payments/*")
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
	// The name resolves as soon as A imports it; A's gateway listens on
	// it once its configuration arrives, a moment later.
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + net.JoinHostPort(webVIP, strconv.Itoa(hln.Addr().(*net.TCPAddr).Port)) + "/")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "hello from site-b" {
			return fmt.Errorf("HTTP through the gateways: %q", body)
		}
		return nil
	})
	// Everything between the gateways was TLS: the canary never crossed
	// in the clear, though bytes did cross.
	seen := rec.seen()
	if len(seen) < 1000 {
		t.Fatalf("only %d bytes crossed between the gateways", len(seen))
	}
	if bytes.Contains(seen, []byte("CANARY")) || bytes.Contains(seen, []byte("hello from site-b")) {
		t.Fatal("plaintext crossed between the gateways")
	}
	// Many connections share the tunnels: once both tunnels to the peer
	// gateway are up (the last two connections took one each), new
	// connections cost no handshake. (Handshakes before that, failed ones
	// included while the sites' configurations settled, are not counted.)
	handshakes := func() float64 { return testutil.ToFloat64(a.metric(t, "strait_gateway_tunnel_handshakes_total")) }
	before := handshakes()
	for i := range 20 {
		if _, err := echo(addr, fmt.Sprint("again-", i)); err != nil {
			t.Fatal(err)
		}
	}
	if hs := handshakes() - before; hs != 0 {
		t.Fatalf("%v tunnel handshakes for 20 connections over two pooled tunnels, want 0", hs)
	}
}

// TestGatewayFailover: site B runs two gateways; one is stopped under
// load; connections started after that all succeed on the other.
func TestGatewayFailover(t *testing.T) {
	a, b := federatedPair(t)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b1", nil)
	b1stop := b.stopGW // stops gw-b1 and waits for it
	b.gwDir = ""
	b.startGateway(t, "gw-b2", nil)
	ctx := controlplanetest.Ctx(t)
	port := echoServer(t)
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/api")
	// Both of B's gateways are known to A.
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		r, err := a.Client(0).Federation.List(ctx, &apipb.ListPeersFedRequest{Name: "site-b"})
		if err != nil {
			return err
		}
		if n := len(r.Peers[0].Imports.Gateways); n != 2 {
			return fmt.Errorf("A knows %d of B's gateways", n)
		}
		return nil
	})
	addr := reachable(t, a, "api.payments.site-b.mesh", port, 15*time.Second)

	// Load: four clients, one connection after another.
	type result struct {
		start time.Time
		err   error
	}
	results := make(chan result, 1<<20)
	lctx, stopLoad := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; lctx.Err() == nil; n++ {
				start := time.Now()
				line := fmt.Sprintf("c%d-%d", i, n)
				got, err := echo(addr, line)
				if err == nil && got != line+"\n" {
					err = fmt.Errorf("echo %q", got)
				}
				results <- result{start, err}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // load before the loss
	killed := time.Now()
	b1stop()
	stopped := time.Now()
	time.Sleep(time.Second) // load after it
	stopLoad()
	wg.Wait()
	close(results)
	var before, after, failedAfter int
	for r := range results {
		if r.start.Before(killed) {
			before++
			continue
		}
		after++
		if r.err != nil && r.start.After(stopped) {
			failedAfter++
			t.Errorf("a connection started after the gateway stopped failed: %v", r.err)
		}
	}
	if before == 0 || after == 0 {
		t.Fatalf("load too thin to tell: %d before, %d after", before, after)
	}
	t.Logf("%d connections before the loss, %d after (%d failed after it stopped)", before, after, failedAfter)
}

// TestConfigRefusals: a configuration the gateway cannot run with is
// refused by New, with the reason.
func TestConfigRefusals(t *testing.T) {
	ok := gateway.Config{Name: "gw", Servers: []string{"127.0.0.1:1"}, DataDir: t.TempDir(), WANAddr: "127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		edit func(*gateway.Config)
		want string
	}{
		{"no name", func(c *gateway.Config) { c.Name = "" }, "required"},
		{"no servers", func(c *gateway.Config) { c.Servers = nil }, "required"},
		{"no wan address", func(c *gateway.Config) { c.WANAddr = "" }, "wan address"},
		{"negative tunnels", func(c *gateway.Config) { c.TunnelsPerPeer = -1 }, "tunnels per peer"},
		{"too many tunnels", func(c *gateway.Config) { c.TunnelsPerPeer = 65 }, "tunnels per peer"},
		{"negative streams per tunnel", func(c *gateway.Config) { c.MaxStreamsPerTunnel = -1 }, "max streams per tunnel"},
		{"negative streams per peer", func(c *gateway.Config) { c.MaxStreamsPerPeer = -1 }, "max streams per peer"},
		{"negative tunnel buffer", func(c *gateway.Config) { c.TunnelBufferMiB = -1 }, "tunnel buffer"},
		{"negative egress listeners", func(c *gateway.Config) { c.MaxEgressListeners = -1 }, "max egress listeners"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			if _, err := gateway.New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error about %q", err, tc.want)
			}
		})
	}
	if _, err := gateway.New(ok); err != nil {
		t.Fatalf("a valid configuration: %v", err)
	}
}

// TestStopCutsHeldEgressConnections: a local client that keeps a carried
// connection open (and never closes its half) is cut when the drain ends,
// so the gateway stops within its DrainTimeout instead of waiting on it.
func TestStopCutsHeldEgressConnections(t *testing.T) {
	a, b := federatedPair(t)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	echoPort := echoServer(t)
	register(t, b, "payments", "api", "api-1", echoPort, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/*")
	addr := resolvedAddr(t, a, "api.payments.site-b.mesh", echoPort, 15*time.Second)
	var held net.Conn
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("hold\n")); err != nil {
			c.Close()
			return err
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			c.Close()
			return err
		}
		held = c
		return nil
	})
	defer held.Close()
	stopped := make(chan struct{})
	go func() { a.stopGW(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second): // DrainTimeout is 2s
		t.Fatal("the gateway did not stop while a client held a carried connection open")
	}
}
