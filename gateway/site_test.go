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
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/sitetest"
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
	if s.gwDir == "" {
		s.gwDir = t.TempDir()
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
	cfg := gateway.Config{Name: name, Servers: s.gwServers, DataDir: s.gwDir,
		WANListener: ln, AdvertiseWAN: advertise, HeartbeatInterval: 200 * time.Millisecond, DrainTimeout: 2 * time.Second,
		HandshakeTimeout: 500 * time.Millisecond, RenewCheck: 100 * time.Millisecond, TunnelsPerPeer: 2,
		AccessLog: testLogLevel <= slog.LevelInfo, Registerer: s.reg, Gatherer: s.reg, Logger: logger}
	for _, f := range tweaks {
		f(&cfg)
	}
	gw := sitetest.StartGateway(t, s.Cluster, cfg)
	s.gw, s.stopGW, s.gwDone, s.wanAddr = gw.Gateway, gw.Stop, gw.Done, advertise
}

// federatedPair starts site-a and site-b on a new emulated WAN and
// federates them; neither has a gateway yet.
func federatedPair(t testing.TB, tweaks ...func(*controlplane.Config)) (a, b *site) {
	t.Helper()
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b = startSite(t, "site-a", w, tweaks...), startSite(t, "site-b", w, tweaks...)
	federate(t, a, b)
	return a, b
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

// resolvedAddr waits (up to d) until s's mesh DNS resolves name, and
// returns the address it resolved to with port.
func resolvedAddr(t testing.TB, s *site, name string, port int, d time.Duration) string {
	t.Helper()
	var vip string
	controlplanetest.WaitFor(t, d, func() error {
		var err error
		vip, err = resolve(t, s, name)
		return err
	})
	return net.JoinHostPort(vip, strconv.Itoa(port))
}

// reachable is resolvedAddr, waiting also until a line echoes back
// through that address.
func reachable(t testing.TB, s *site, name string, port int, d time.Duration) string {
	t.Helper()
	var addr string
	controlplanetest.WaitFor(t, d, func() error {
		vip, err := resolve(t, s, name)
		if err != nil {
			return err
		}
		addr = net.JoinHostPort(vip, strconv.Itoa(port))
		_, err = echo(addr, "warm-up")
		return err
	})
	return addr
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
