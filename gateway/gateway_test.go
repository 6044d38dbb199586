package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
	"github.com/straitmesh/strait/internal/tunnelmux"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/mtls"
	"github.com/straitmesh/strait/trust/svidfile"
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
	// gwServers, when set, are the servers the next gateway is given
	// (Nodes[0] otherwise).
	gwServers []string
}

// vipRange is a /24 of 127.0.0.0/8 of this test run, so that parallel
// test processes never bind the same virtual IP.
var vipRange = fmt.Sprintf("127.%d.%d.0/24", 100+rand.IntN(100), rand.IntN(250))

func startSite(t testing.TB, name string, w *wan.WAN, tweaks ...func(*controlplane.Config)) *site {
	t.Helper()
	return startSiteN(t, name, w, 1, tweaks...)
}

// startSiteN starts a site of n servers.
func startSiteN(t testing.TB, name string, w *wan.WAN, n int, tweaks ...func(*controlplane.Config)) *site {
	t.Helper()
	c := controlplanetest.Start(t, n, controlplanetest.Options{Site: name, BundleEndpoint: true, DNS: true, InMemoryRaft: true,
		Tweak: func(c *controlplane.Config) {
			c.PeerDialer = w.Dial
			c.PeerHeartbeat, c.PeerStaleAfter = 100*time.Millisecond, time.Second
			c.VirtualIPCIDR = vipRange
			for _, f := range tweaks {
				f(c)
			}
		}})
	return &site{Cluster: c}
}

// startGateway joins a gateway to s and runs it; with tap, peers reach it
// through a recording proxy.
func (s *site) startGateway(t testing.TB, name string, tap func([]byte), tweaks ...func(*gateway.Config)) {
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
	logger := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: testLogLevel}))
	if os.Getenv("STRAIT_TEST_LOGS") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("site", name)
	}
	servers := s.gwServers
	if servers == nil {
		servers = []string{s.Nodes[0].Addr}
	}
	cfg := gateway.Config{Name: name, Servers: servers, DataDir: s.gwDir, JoinToken: tok.Secret,
		WANListener: ln, AdvertiseWAN: advertise, HeartbeatInterval: 200 * time.Millisecond, DrainTimeout: 2 * time.Second,
		HandshakeTimeout: 500 * time.Millisecond, RenewCheck: 100 * time.Millisecond, TunnelsPerPeer: 2,
		AccessLog: testLogLevel <= slog.LevelInfo, Registerer: s.reg, Gatherer: s.reg, Logger: logger}
	for _, f := range tweaks {
		f(&cfg)
	}
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s.gw, s.stopGW, s.gwDone, s.wanAddr = gw, cancel, done, advertise
	go func() { done <- gw.Run(gctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	s.stopGW = stop
	t.Cleanup(stop)
	select {
	case <-gw.Ready():
	case err := <-done:
		t.Fatalf("gateway exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("gateway not ready within 20s")
	}
}

func federate(t testing.TB, a, b *site) {
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
func echoServer(t testing.TB) int {
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

func register(t testing.TB, s *site, ns, svc, id string, port int, proto apipb.Protocol) {
	t.Helper()
	_, err := s.Client(0).Catalog.Register(controlplanetest.Ctx(t), &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: ns, Name: svc, Ports: []*apipb.ServicePort{{Name: "main", Protocol: proto}}},
		Instance: &apipb.Instance{Id: id, Address: "127.0.0.1", Ports: map[string]uint32{"main": uint32(port)}},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// exportTo exports ns/svc of site s to the peers named.
func exportTo(t testing.TB, s *site, ns, svc string, to ...string) {
	t.Helper()
	_, err := s.Client(0).Federation.Export(controlplanetest.Ctx(t), &apipb.ExportRequest{Export: &apipb.Export{Namespace: ns, Service: svc, To: to}})
	if err != nil {
		t.Fatal(err)
	}
}

// allow sets an intention on site s letting source reach destination.
func allow(t testing.TB, s *site, source, destination string) {
	t.Helper()
	_, err := s.Client(0).Intentions.Set(controlplanetest.Ctx(t), &apipb.SetIntentionRequest{Intention: &apipb.Intention{
		Source: source, Destination: destination, Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW}})
	if err != nil {
		t.Fatal(err)
	}
}

// resolve asks site s's mesh DNS for name's A record.
func resolve(t testing.TB, s *site, name string) (string, error) {
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

// TestGatewayFailover: site B runs two gateways; one is stopped under
// load; connections started after that all succeed on the other.
func TestGatewayFailover(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b := startSite(t, "site-a", w), startSite(t, "site-b", w)
	federate(t, a, b)
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
	var vip string
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		var err error
		if vip, err = resolve(t, a, "api.payments.site-b.mesh"); err != nil {
			return err
		}
		_, err = echo(net.JoinHostPort(vip, strconv.Itoa(port)), "warm-up")
		return err
	})
	addr := net.JoinHostPort(vip, strconv.Itoa(port))

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

// tunnelFrom opens a raw tunnel to gw as the holder of the identity in
// dir (a gateway data dir), to send what a real gateway never would.
func tunnelFrom(t *testing.T, dir string, to *site) (*tunnelmux.Session, error) {
	t.Helper()
	addr := to.wanAddr
	peerCAs, err := svidfile.ReadCerts(controlplane.CAFile(to.Nodes[0].Dir))
	if err != nil {
		t.Fatal(err)
	}
	chain, key, bundle, err := svidfile.Read(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := x509svid.IDFromCert(chain[0])
	ident := mtls.NewIdentity(x509bundle.FromX509Authorities(id.TrustDomain(), bundle), nil)
	if err := ident.SetSVID(chain, key); err != nil {
		t.Fatal(err)
	}
	ident.SetFederated(x509bundle.NewSet(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(peerCAs[0].URIs[0].Host), peerCAs)))
	conn, err := tls.Dial("tcp", addr, mtls.ClientConfig(ident, func(spiffeid.ID) error { return nil }, meshname.TunnelALPN))
	if err != nil {
		return nil, err
	}
	return tunnelmux.Client(conn, tunnelmux.Config{}), nil
}

// TestGatewayRefusesWhatItShould: garbage, half-open connections, a
// certificate from a trust domain that is not a peer, an SNI nobody
// exports and a claimed source (even one an intention allows: a claim
// proves nothing) are all refused, and leave no goroutine behind.
func TestGatewayRefusesWhatItShould(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b := startSite(t, "site-a", w), startSite(t, "site-b", w)
	federate(t, a, b)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	port := echoServer(t)
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a/web/*", "payments/api")
	sni := "main.api.payments.site-b.strait"
	// Wait until B's gateway serves the export.
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		sess, err := tunnelFrom(t, a.gwDir, b)
		if err != nil {
			return err
		}
		defer sess.Close()
		st, err := sess.Open(testHeader(sni, "web/front"), nil)
		if err != nil {
			return err
		}
		defer st.Close()
		// Refused all the same once served: the allow names a source
		// service, which the peer gateway's claim in the header cannot
		// prove (fail-closed).
		if err := readTestStatus(st); err == nil || !strings.Contains(err.Error(), "no intention allows") {
			return fmt.Errorf("not served yet: %v", err)
		}
		return nil
	})
	// And until a connection through A's egress has been answered by B
	// (refused: no intention allows an unnamed source), so that the
	// goroutines of A's egress listener and of its pooled tunnel are
	// counted before, not after.
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		vip, err := resolve(t, a, "api.payments.site-b.mesh")
		if err != nil {
			return err
		}
		c, err := net.Dial("tcp", net.JoinHostPort(vip, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("x"))
		_, err = io.ReadAll(c)
		return err
	})
	before := gatewayGoroutines()

	// Garbage and half-open connections are dropped.
	for _, payload := range [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), bytes.Repeat([]byte{0x16, 0x03, 0x01, 0xff}, 100), nil} {
		c, err := net.Dial("tcp", b.wanAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(payload)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil && os.IsTimeout(err) {
			t.Fatalf("connection with %d bytes of garbage still open after 5s", len(payload))
		}
		c.Close()
	}
	// A gateway of a trust domain that is not a peer cannot handshake.
	evil, err := ca.Generate(spiffeid.RequireTrustDomainFromString("evil.strait"), time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	cert, err := evil.SignCSR(spiffeid.RequireFromString("spiffe://evil.strait/strait/gateway/x"), csr, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ident := mtls.NewIdentity(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("evil.strait"), []*x509.Certificate{evil.Certificate()}), nil)
	ident.SetSVID([]*x509.Certificate{cert}, key)
	if c, err := tls.Dial("tcp", b.wanAddr, mtls.ClientConfig(ident, func(spiffeid.ID) error { return nil }, meshname.TunnelALPN)); err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("an unfederated trust domain's gateway got through")
		}
		c.Close()
	}
	// A peer's gateway asking for what is not exported, or as a source
	// no intention allows, is refused; a half-open stream times out.
	sess, err := tunnelFrom(t, a.gwDir, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ sni, source, want string }{
		{"main.ledger.payments.site-b.strait", "web/front", "not exported"},
		{"main.api.payments.other.strait", "web/front", "not exported"},
		{sni, "batch/job", "no intention allows"},
		{sni, "", "no intention allows"},
		// The very source the intention allows, claimed by the peer's
		// gateway: a claim is not an identity, so it grants nothing.
		{sni, "web/front", "no intention allows"},
	} {
		st, err := sess.Open(testHeader(tc.sni, tc.source), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := readTestStatus(st); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s as %q: %v, want %q", tc.sni, tc.source, err, tc.want)
		}
		st.Close()
	}
	st, _ := sess.Open(nil, nil)
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := readTestStatus(st); err == nil || os.IsTimeout(err) {
		t.Fatalf("a stream without a header: %v, want it refused before our 5s deadline", err)
	}
	st.Close()
	sess.Close()
	// Nothing is left running in the gateways for any of it. (Only the
	// gateways' goroutines are counted: the servers in this process come
	// and go with their own work.)
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if n, stacks := gatewayGoroutineStacks(); n > before {
			return fmt.Errorf("%d gateway goroutines, %d before the abuse:\n%s", n, before, stacks)
		}
		return nil
	})
}

// testHeader is a stream header, written independently of the gateway's
// own encoder.
func testHeader(sni, source string) []byte {
	b := []byte{1}
	b = binary.AppendUvarint(b, uint64(len(sni)))
	b = append(b, sni...)
	b = binary.AppendUvarint(b, uint64(len(source)))
	return append(b, source...)
}

func readTestStatus(r io.Reader) error {
	br := bufio.NewReader(r)
	code, err := br.ReadByte()
	if err != nil {
		return err
	}
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return err
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(br, msg); err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("refused (%d): %s", code, msg)
	}
	return nil
}

// testLogLevel is the gateways' log level in tests (the access log is at
// info); STRAIT_BENCH_QUIET=1 raises it to measure without it.
var testLogLevel = func() slog.Level {
	if os.Getenv("STRAIT_BENCH_QUIET") != "" {
		return slog.LevelWarn
	}
	return slog.LevelInfo
}()

// load runs clients through addr until stopped, and returns the failures.
func load(addr string, clients int) (stop func() (ok int, failed []error)) {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var n int
	var errs []error
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ctx.Err() == nil; k++ {
				line := fmt.Sprintf("c%d-%d", i, k)
				got, err := echo(addr, line)
				if err == nil && got != line+"\n" {
					err = fmt.Errorf("echo %q", got)
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					n++
				}
				mu.Unlock()
			}
		}()
	}
	return func() (int, []error) {
		cancel()
		wg.Wait()
		return n, errs
	}
}

// TestCARotationUnderLoad: each site rotates its CA in turn while traffic
// flows between them; gateways renew onto the new roots, peers learn the
// new bundles, the old roots are dropped, and no connection fails.
func TestCARotationUnderLoad(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	fast := func(c *controlplane.Config) { c.CAPropagationDelay, c.MaxLeafTTL = time.Second, 3*time.Second }
	a, b := startSite(t, "site-a", w, fast), startSite(t, "site-b", w, fast)
	federate(t, a, b)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	ctx := controlplanetest.Ctx(t)
	port := echoServer(t)
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/api")
	var addr string
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		vip, err := resolve(t, a, "api.payments.site-b.mesh")
		if err != nil {
			return err
		}
		addr = net.JoinHostPort(vip, strconv.Itoa(port))
		_, err = echo(addr, "warm-up")
		return err
	})
	stop := load(addr, 4)
	for _, s := range []*site{b, a} {
		cl := s.Client(0)
		before, err := cl.Operator.CAStatus(ctx, &apipb.CAStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Operator.RotateCA(ctx, &apipb.RotateCARequest{}); err != nil {
			t.Fatal(err)
		}
		// Done when only the new root is left and the gateway's SVID
		// comes from it.
		controlplanetest.WaitFor(t, 30*time.Second, func() error {
			st, err := cl.Operator.CAStatus(ctx, &apipb.CAStatusRequest{})
			if err != nil {
				return err
			}
			if len(st.Roots) != 1 || st.Roots[0].SubjectKeyId == before.Roots[0].SubjectKeyId {
				return fmt.Errorf("%d roots", len(st.Roots))
			}
			svid, err := os.ReadFile(filepath.Join(s.gwDir, "tls", "svid.pem"))
			if err != nil {
				return err
			}
			chain, err := svidfile.ParseCerts(svid)
			if err != nil {
				return err
			}
			if fmt.Sprintf("%x", chain[0].AuthorityKeyId) != st.Roots[0].SubjectKeyId {
				return fmt.Errorf("gateway svid not from the new root yet")
			}
			return nil
		})
		// And new tunnels work on the new roots: a fresh connection.
		if _, err := echo(addr, "after-rotation"); err != nil {
			t.Fatalf("after rotating %s: %v", s.Nodes[0].Server.Store().Site().Site, err)
		}
	}
	ok, failed := stop()
	if len(failed) > 0 {
		t.Fatalf("%d of %d connections failed during the rotations; first: %v", len(failed), ok+len(failed), failed[0])
	}
	t.Logf("%d connections across both rotations, none failed", ok)
}

// firewall is the network between sites when only gateway ports are open:
// a dialer that connects (for real) to allowed addresses and refuses the
// rest, remembering what was tried.
type firewall struct {
	mu      sync.Mutex
	allowed map[string]bool
	dialed  map[string]int
	refused map[string]int
}

func (f *firewall) allow(addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range addrs {
		f.allowed[a] = true
	}
}

func (f *firewall) Dial(ctx context.Context, addr string) (net.Conn, error) {
	f.mu.Lock()
	ok := f.allowed[addr]
	if ok {
		f.dialed[addr]++
	} else {
		f.refused[addr]++
	}
	f.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("firewall: %s is not a gateway port", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// TestOnlyGatewayPortsBetweenSites: with nothing but the gateways' WAN
// ports reachable between the sites, they federate (the join), replicate
// their exports and carry traffic: servers reach each other through the
// gateways, which pass their mTLS through undecrypted.
func TestOnlyGatewayPortsBetweenSites(t *testing.T) {
	fw := &firewall{allowed: map[string]bool{}, dialed: map[string]int{}, refused: map[string]int{}}
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	closed := func(c *controlplane.Config) { c.PeerDialer = fw.Dial }
	a, b := startSite(t, "site-a", w, closed), startSite(t, "site-b", w, closed)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	fw.allow(a.wanAddr, b.wanAddr)
	// The token carries the issuer's gateways once they are in its catalog.
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		for _, s := range []*site{a, b} {
			if len(s.Nodes[0].Server.Store().GatewayAddresses()) == 0 {
				return fmt.Errorf("no gateway registered yet")
			}
		}
		return nil
	})
	federate(t, a, b)
	port := echoServer(t)
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/api")
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		vip, err := resolve(t, a, "api.payments.site-b.mesh")
		if err != nil {
			return err
		}
		_, err = echo(net.JoinHostPort(vip, strconv.Itoa(port)), "through the gateways only")
		return err
	})
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.dialed[a.wanAddr] == 0 || fw.dialed[b.wanAddr] == 0 {
		t.Fatalf("control traffic did not go through both gateways: %v", fw.dialed)
	}
	for addr, n := range fw.refused {
		t.Logf("refused %d dial(s) to %s (not a gateway port)", n, addr)
	}
}

// workloadSVID issues an X.509-SVID for id from site s's CA (what the
// site's agent would hand the workload).
func workloadSVID(t *testing.T, s *site, id string) *x509svid.SVID {
	t.Helper()
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	cert, err := s.Nodes[0].Server.Authority().SignSVID(controlplanetest.Ctx(t), spiffeid.RequireFromString(id), csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// TestEndToEndIdentityThroughGateways: workloads holding SVIDs speak mTLS
// to each other through the gateways, which carry the bytes without
// decrypting them: the service in B sees the caller's own SVID from A,
// verified against A's bundle, and nothing readable crosses between the
// gateways.
func TestEndToEndIdentityThroughGateways(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b := startSite(t, "site-a", w), startSite(t, "site-b", w)
	federate(t, a, b)
	rec := &recorder{}
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", rec.tap)
	caller, callee := "spiffe://site-a.strait/ns/web/svc/front", "spiffe://site-b.strait/ns/payments/svc/api"
	bundles := x509bundle.NewSet(a.Nodes[0].Server.Bundle(), b.Nodes[0].Server.Bundle())

	// B's service: mTLS, accepting only A's web/front, telling it who it is.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(workloadSVID(t, b, callee), bundles, tlsconfig.AuthorizeID(spiffeid.RequireFromString(caller))))
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
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if tc.Handshake() != nil {
					return
				}
				id, _ := x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
				fmt.Fprintf(c, "SECRET-REPLY-for-%s\n", id)
			}()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/api")
	clientConf := tlsconfig.MTLSClientConfig(workloadSVID(t, a, caller), bundles, tlsconfig.AuthorizeID(spiffeid.RequireFromString(callee)))
	var reply string
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		vip, err := resolve(t, a, "api.payments.site-b.mesh")
		if err != nil {
			return err
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", net.JoinHostPort(vip, strconv.Itoa(port)), clientConf)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		reply, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if reply != "SECRET-REPLY-for-"+caller+"\n" {
		t.Fatalf("B's service saw %q, want the caller's own identity", reply)
	}
	if bytes.Contains(rec.seen(), []byte("SECRET-REPLY")) {
		t.Fatal("plaintext crossed between the gateways")
	}
}

// gatewayGoroutines counts the goroutines running gateway code.
func gatewayGoroutines() int {
	n, _ := gatewayGoroutineStacks()
	return n
}

// gatewayGoroutineStacks counts the goroutines running gateway code and
// returns their stacks.
func gatewayGoroutineStacks() (int, []byte) {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var stacks [][]byte
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("straitmesh/strait/gateway.")) {
			stacks = append(stacks, g)
		}
	}
	return len(stacks), bytes.Join(stacks, []byte("\n\n"))
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
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b := startSite(t, "site-a", w), startSite(t, "site-b", w)
	federate(t, a, b)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	echoPort := echoServer(t)
	register(t, b, "payments", "api", "api-1", echoPort, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/*")
	var vip string
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		var err error
		vip, err = resolve(t, a, "api.payments.site-b.mesh")
		return err
	})
	addr := net.JoinHostPort(vip, strconv.Itoa(echoPort))
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
