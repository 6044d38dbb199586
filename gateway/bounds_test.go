package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
	"github.com/straitmesh/strait/internal/tunnelmux"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/trust/svidfile"
)

// logRecords is a slog handler keeping every record, for tests that check
// what a gateway logs.
type logRecords struct {
	mu   *sync.Mutex
	recs *[]logRecord
}

type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newLogRecords() logRecords { return logRecords{mu: &sync.Mutex{}, recs: &[]logRecord{}} }

func (h logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h logRecords) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h logRecords) WithGroup(string) slog.Handler            { return h }
func (h logRecords) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool { rec.attrs[a.Key] = a.Value.String(); return true })
	h.mu.Lock()
	*h.recs = append(*h.recs, rec)
	h.mu.Unlock()
	return nil
}

// find returns the records with msg whose attrs include every key=value
// of want.
func (h logRecords) find(msg string, want map[string]string) []logRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logRecord
next:
	for _, r := range *h.recs {
		if r.msg != msg {
			continue
		}
		for k, v := range want {
			if r.attrs[k] != v {
				continue next
			}
		}
		out = append(out, r)
	}
	return out
}

// streamStatus opens a stream for sni as the gateway whose data dir is
// dir and returns the answer (nil: served).
func streamStatus(t *testing.T, dir string, to *site, sni, source string) error {
	t.Helper()
	sess, err := tunnelFrom(t, dir, to)
	if err != nil {
		return err
	}
	defer sess.Close()
	st, err := sess.Open(testHeader(sni, source), nil)
	if err != nil {
		return err
	}
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	return readTestStatus(st)
}

// TestExportPeerListHonoured (M1): site A exports shop/web to peer B only,
// and an intention allows peer C to reach shop/*: C's gateway is refused,
// B's is served. Every refusal is logged at info with its cause, an
// explicit deny intention named as such, distinct from the default deny;
// a served connection is in the access log.
func TestExportPeerListHonoured(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b, c := startSite(t, "site-a", w), startSite(t, "site-b", w), startSite(t, "site-c", w)
	federate(t, a, b)
	federate(t, a, c)
	logs := newLogRecords()
	a.startGateway(t, "gw-a", nil, func(cfg *gateway.Config) { cfg.Logger, cfg.AccessLog = slog.New(logs), true })
	b.startGateway(t, "gw-b", nil)
	c.startGateway(t, "gw-c", nil)
	port := echoServer(t)
	register(t, a, "shop", "web", "web-1", port, apipb.Protocol_PROTOCOL_TCP)
	register(t, a, "shop", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	register(t, a, "ops", "db", "db-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, a, "shop", "web", "site-b")
	exportTo(t, a, "shop", "api", "site-b", "site-c")
	exportTo(t, a, "ops", "db", "*")
	allow(t, a, "site-b", "shop/*")
	allow(t, a, "site-c", "shop/*")
	if _, err := a.Client(0).Intentions.Set(controlplanetest.Ctx(t), &apipb.SetIntentionRequest{Intention: &apipb.Intention{
		Source: "site-c", Destination: "shop/api", Action: apipb.IntentionAction_INTENTION_ACTION_DENY}}); err != nil {
		t.Fatal(err)
	}
	web, api, db := "main.web.shop.site-a.strait", "main.api.shop.site-a.strait", "main.db.ops.site-a.strait"
	// B is served once A's gateway has the exports and the deny.
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		if err := streamStatus(t, b.gwDir, a, web, ""); err != nil {
			return err
		}
		if err := streamStatus(t, c.gwDir, a, api, ""); err == nil || !strings.Contains(err.Error(), "denied by intention") {
			return fmt.Errorf("C on shop/api: %v", err)
		}
		return nil
	})
	noIntention := "no intention allows spiffe://site-c.strait/strait/gateway/gw-c to reach ops/db"
	explicit := "denied by intention deny site-c/*/* -> shop/api"
	for _, tc := range []struct {
		name, dir, sni string
		// answer is what the peer reads, want the cause logged.
		answer, want string
	}{
		{"B on shop/web", b.gwDir, web, "", ""},
		// C is answered as for a service that does not exist.
		{"C on shop/web, exported to B only", c.gwDir, web, web + " is not exported to site-c.strait", "shop/web is exported, but not to site-c.strait"},
		{"B on shop/api", b.gwDir, api, "", ""},
		{"C on shop/api, an explicit deny", c.gwDir, api, explicit, explicit},
		{"C on ops/db, no intention", c.gwDir, db, noIntention, noIntention},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := streamStatus(t, tc.dir, a, tc.sni, "")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.answer)):
				t.Fatalf("answer %v, want a refusal saying %q", err, tc.answer)
			case tc.want != "":
				if len(logs.find("connection denied", map[string]string{"cause": tc.want})) == 0 {
					t.Fatalf("no log record msg=\"connection denied\" cause=%q", tc.want)
				}
			}
		})
	}
	// The access log has B's connections (logged when they end).
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if len(logs.find("connection", map[string]string{"direction": "ingress", "service": "shop/web", "peer": "site-b.strait"})) == 0 {
			return fmt.Errorf("no access log record for B's connection to shop/web")
		}
		return nil
	})
	for _, r := range logs.find("connection denied", nil) {
		if r.level != slog.LevelInfo {
			t.Fatalf("a denial logged at %s", r.level)
		}
	}
}

// TestUnknownSNIsAreOneSeries (M5): 1,000 streams naming distinct services
// that do not exist add at most one series to the gateway's connection
// counter (service="unknown"), and each is refused; they cost a handful
// of log lines, not a thousand.
func TestUnknownSNIsAreOneSeries(t *testing.T) {
	a, b := federatedPair(t)
	logs := newLogRecords()
	a.startGateway(t, "gw-a", nil, func(cfg *gateway.Config) { cfg.Logger = slog.New(logs) })
	b.startGateway(t, "gw-b", nil)
	// Wait for a first refusal, so the series for it exists before.
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		if err := streamStatus(t, b.gwDir, a, "main.nothing.shop.site-a.strait", ""); err == nil || !strings.Contains(err.Error(), "not exported") {
			return fmt.Errorf("answer %v", err)
		}
		return nil
	})
	series := func() int {
		n, err := testutil.GatherAndCount(a.reg, "strait_gateway_connections_total")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := series()
	sess, err := tunnelFrom(t, b.gwDir, a)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for worker := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := worker; i < 1000; i += 20 {
				sni := fmt.Sprintf("main.svc%d.ns%d.site-a.strait", i, i)
				if i%2 == 1 {
					sni = fmt.Sprintf("x%d.y.z.other%d.strait", i, i)
				}
				st, err := sess.Open(testHeader(sni, ""), nil)
				if err != nil {
					errs <- err
					return
				}
				st.SetReadDeadline(time.Now().Add(10 * time.Second))
				if err := readTestStatus(st); err == nil || !strings.Contains(err.Error(), "not exported") {
					errs <- fmt.Errorf("%s: %v", sni, err)
				}
				st.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if after := series(); after > before+1 {
		t.Fatalf("%d series of strait_gateway_connections_total after 1,000 unknown SNIs, %d before", after, before)
	}
	// One line per peer every 10s: the flood is far shorter than a minute.
	if n := len(logs.find("connection refused", nil)); n == 0 || n > 8 {
		t.Fatalf("%d log lines for 1,001 refused streams, want a few", n)
	}
}

// gauge is the value of the series of a gauge or counter family of reg
// with the label name=value.
func gauge(t *testing.T, reg *prometheus.Registry, family, name, value string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != family {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == name && l.GetValue() == value {
					return m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestEgressListenerLimitAndBindFailures (H2, issue 15): site A imports
// four services. Its first gateway, limited to two egress listeners,
// opens two and leaves two closed; a second gateway on the same host
// cannot bind the two the first holds and opens the other two. Each says
// so once, with what to check, and counts it; further configurations
// (new exports of A's) log nothing more.
func TestEgressListenerLimitAndBindFailures(t *testing.T) {
	a, b := federatedPair(t)
	logs1, logs2 := newLogRecords(), newLogRecords()
	a.startGateway(t, "gw-a1", nil, func(cfg *gateway.Config) { cfg.Logger, cfg.MaxEgressListeners = slog.New(logs1), 2 })
	b.startGateway(t, "gw-b", nil)
	port := echoServer(t)
	for i := range 4 {
		svc := fmt.Sprint("s", i)
		register(t, b, "shop", svc, svc+"-1", port, apipb.Protocol_PROTOCOL_TCP)
		exportTo(t, b, "shop", svc, "site-a")
	}
	listeners := func(reg *prometheus.Registry, open, other float64, state string) func() error {
		return func() error {
			if o, x := gauge(t, reg, "strait_gateway_egress_listeners", "state", "open"), gauge(t, reg, "strait_gateway_egress_listeners", "state", state); o != open || x != other {
				return fmt.Errorf("%v open, %v %s; want %v and %v", o, x, state, open, other)
			}
			return nil
		}
	}
	controlplanetest.WaitFor(t, 20*time.Second, listeners(a.reg, 2, 2, "over_limit"))
	a2 := &site{Cluster: a.Cluster}
	a2.startGateway(t, "gw-a2", nil, func(cfg *gateway.Config) { cfg.Logger = slog.New(logs2) })
	controlplanetest.WaitFor(t, 20*time.Second, listeners(a2.reg, 2, 2, "bind_failed"))

	// Three more configurations reach both gateways, and change nothing
	// of their egress: nothing more is logged.
	overLimit := func() []logRecord { return logs1.find("egress listeners over the limit not opened", nil) }
	cannotBind := func() []logRecord {
		return logs2.find("egress listener cannot bind", nil)
	}
	settled := len(overLimit())
	if last := overLimit()[settled-1]; last.attrs["limit"] != "2" || last.attrs["not_opened"] != "2" || last.attrs["configured"] != "4" {
		t.Fatalf("the limit's log says %v", last.attrs)
	}
	applied := func(l logRecords) int { return len(l.find("configuration applied", nil)) }
	for i := range 3 {
		n1, n2 := applied(logs1), applied(logs2)
		svc := fmt.Sprint("local", i)
		register(t, a, "shop", svc, svc+"-1", port, apipb.Protocol_PROTOCOL_TCP)
		exportTo(t, a, "shop", svc, "site-b")
		controlplanetest.WaitFor(t, 20*time.Second, func() error {
			if applied(logs1) == n1 || applied(logs2) == n2 {
				return fmt.Errorf("export %s not applied by both gateways yet", svc)
			}
			return nil
		})
	}
	if n := len(overLimit()); n != settled {
		t.Fatalf("%d log records of listeners over the limit after three configurations that did not change it, %d before", n, settled)
	}
	if n := gauge(t, a.reg, "strait_gateway_egress_listener_refusals_total", "cause", "limit"); n != 2 {
		t.Fatalf("%v listeners counted over the limit, want 2", n)
	}
	failed := cannotBind()
	if len(failed) != 2 {
		t.Fatalf("%d log records of listeners that cannot bind, want 2 (one per listener)", len(failed))
	}
	for _, r := range failed {
		if !strings.Contains(r.attrs["err"], "address already in use") || !strings.Contains(r.attrs["check"], "ip route add local") || r.attrs["addr"] == "" {
			t.Fatalf("the bind failure does not say what failed and what to check: %v", r.attrs)
		}
	}
	if n := gauge(t, a2.reg, "strait_gateway_egress_listener_refusals_total", "cause", "bind"); n != 2 {
		t.Fatalf("%v bind failures counted, want 2", n)
	}
}

// sinkServer accepts connections and never reads them (an instance that
// has stopped reading); it holds them until the test ends.
func sinkServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestStreamFloodIsBounded (M4): a fake gateway of peer B (tunnelmux over
// mTLS with B's real gateway SVID) opens 40 streams on one tunnel to A's
// gateway, each pushing 16 MiB to an instance that never reads. A's
// gateway holds at most its buffer budget, refuses the streams over its
// per-tunnel and per-peer caps with a reason B reads, resets the streams
// holding the most when the budget is reached, and counts each; peer C's
// requests through its real gateway succeed meanwhile.
func TestStreamFloodIsBounded(t *testing.T) {
	const perTunnel, perPeer, budgetMiB = 24, 16, 16
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b, c := startSite(t, "site-a", w), startSite(t, "site-b", w), startSite(t, "site-c", w)
	federate(t, a, b)
	federate(t, a, c)
	a.startGateway(t, "gw-a", nil, func(cfg *gateway.Config) {
		cfg.MaxStreamsPerTunnel, cfg.MaxStreamsPerPeer, cfg.TunnelBufferMiB = perTunnel, perPeer, budgetMiB
	})
	b.startGateway(t, "gw-b", nil)
	c.startGateway(t, "gw-c", nil)
	register(t, a, "shop", "sink", "sink-1", sinkServer(t), apipb.Protocol_PROTOCOL_TCP)
	echoPort := echoServer(t)
	register(t, a, "shop", "echo", "echo-1", echoPort, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, a, "shop", "sink", "site-b")
	exportTo(t, a, "shop", "echo", "site-c")
	allow(t, a, "site-b", "shop/sink")
	allow(t, a, "site-c", "shop/echo")
	sink := "main.sink.shop.site-a.strait"
	controlplanetest.WaitFor(t, 20*time.Second, func() error { return streamStatus(t, b.gwDir, a, sink, "") })
	echoAddr := ""
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		vip, err := resolve(t, c, "echo.shop.site-a.mesh")
		if err != nil {
			return err
		}
		echoAddr = net.JoinHostPort(vip, strconv.Itoa(echoPort))
		_, err = echo(echoAddr, "warm")
		return err
	})

	// The budget is sampled throughout.
	budget := int64(budgetMiB) << 20
	var peak atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n := a.gw.TunnelBuffered(); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()

	sess, err := tunnelFrom(t, b.gwDir, a)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	payload := bytes.Repeat([]byte("flood..."), 16<<20/8)
	stop := make(chan struct{})
	var mu sync.Mutex
	outcomes := map[string]int{}
	record := func(s string) { mu.Lock(); outcomes[s]++; mu.Unlock() }
	var wg sync.WaitGroup
	for range 40 {
		st, err := sess.Open(testHeader(sink, ""), nil)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() { defer wg.Done(); st.Write(payload) }()
		go func() {
			defer wg.Done()
			defer st.Close()
			st.SetReadDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(st)
			if err := readTestStatus(br); err != nil {
				record(resetReason(err))
				return
			}
			go func() { <-stop; st.SetReadDeadline(time.Now()) }()
			st.SetReadDeadline(time.Time{})
			_, err := br.ReadByte()
			record("served, then " + resetReason(err))
		}()
	}
	// Once the budget has cut a stream, C's requests still succeed.
	refusals := func(cause string) float64 {
		return gauge(t, a.reg, "strait_gateway_tunnel_stream_refusals_total", "cause", cause)
	}
	controlplanetest.WaitFor(t, 60*time.Second, func() error {
		if refusals("buffer_budget") == 0 {
			return fmt.Errorf("no stream cut by the budget yet (%d bytes held)", a.gw.TunnelBuffered())
		}
		return nil
	})
	for i := range 20 {
		line := fmt.Sprint("healthy-", i)
		if got, err := echo(echoAddr, line); err != nil || got != line+"\n" {
			t.Fatalf("peer C's request %d during the flood: %q, %v", i, got, err)
		}
	}
	close(stop)
	wg.Wait()
	close(stopSampling)
	<-sampled
	t.Logf("outcomes of the 40 streams: %v; peak %d bytes held (budget %d)", outcomes, peak.Load(), budget)
	if p := peak.Load(); p > budget {
		t.Fatalf("%d bytes held at the peak, over the budget of %d", p, budget)
	}
	for reason, cause := range map[string]string{
		fmt.Sprintf("too many streams on this tunnel (at most %d)", perTunnel):         "streams_per_tunnel",
		fmt.Sprintf("too many streams from site-b.strait (at most %d)", perPeer):       "streams_per_peer",
		"served, then buffer budget exhausted: this stream held the most unread bytes": "buffer_budget",
	} {
		if outcomes[reason] == 0 {
			t.Errorf("no stream of B's ended with %q", reason)
		}
		if refusals(cause) == 0 {
			t.Errorf("no refusal counted for %s", cause)
		}
	}
	served := 0
	for reason, n := range outcomes {
		if strings.HasPrefix(reason, "served") {
			served += n
		}
	}
	if served > perPeer {
		t.Errorf("%d of B's streams served at once, over the cap of %d", served, perPeer)
	}
	if n, _ := testutil.GatherAndCount(a.reg, "strait_gateway_tunnel_buffered_bytes"); n != 1 {
		t.Errorf("the buffered bytes gauge is missing")
	}
}

// resetReason is the reason of a stream reset by the peer, or the error.
func resetReason(err error) string {
	if errors.Is(err, tunnelmux.ErrReset) {
		_, reason, _ := strings.Cut(err.Error(), "stream reset by the peer: ")
		return reason
	}
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// TestGatewaySVIDLivesAnHour (L4): a gateway's SVID lasts at most an hour
// (how long a revoked gateway can still reach peers, which check only the
// certificate); past half its life the gateway renews it; a gateway
// started with an expired one says what to do and exits.
func TestGatewaySVIDLivesAnHour(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a := startSite(t, "site-a", w)
	var skew atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	a.startGateway(t, "gw-a", nil, func(cfg *gateway.Config) { cfg.Now = now })
	leaf := func() *x509.Certificate {
		chain, _, _, err := svidfile.Read(filepath.Join(a.gwDir, "tls"))
		if err != nil {
			t.Fatal(err)
		}
		return chain[0]
	}
	first := leaf()
	if left := time.Until(first.NotAfter); left > time.Hour {
		t.Fatalf("gateway SVID valid for %s more, want at most 1h", left.Round(time.Second))
	}
	skew.Store(int64(31 * time.Minute))
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		if leaf().SerialNumber.Cmp(first.SerialNumber) == 0 {
			return fmt.Errorf("not renewed past half-life")
		}
		return nil
	})
	a.stopGW()
	gw, err := gateway.New(gateway.Config{Name: "gw-a", Servers: []string{a.Nodes[0].Addr}, DataDir: a.gwDir, WANAddr: "127.0.0.1:0",
		Now: func() time.Time { return time.Now().Add(2 * time.Hour) }, Logger: slog.New(newLogRecords())})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := gw.Run(ctx); err == nil || !strings.Contains(err.Error(), "SVID expired") || !strings.Contains(err.Error(), "strait gateway revoke gw-a") {
		t.Fatalf("a gateway with an expired SVID: %v, want it to say so and what to do", err)
	}
}
