package dns_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/dns"
	"github.com/straitmesh/strait/internal/acceptloop"
)

type testServer struct {
	srv   *dns.Server
	addr  string
	store *state.Store
	index uint64
	reg   *prometheus.Registry
}

func (ts *testServer) register(t testing.TB, ns, svc, id, addr string, passing bool, ports ...string) {
	t.Helper()
	s := &apipb.Service{Namespace: ns, Name: svc}
	in := &apipb.Instance{Id: id, Address: addr, Ports: map[string]uint32{}, Health: apipb.Health_HEALTH_PASSING}
	if !passing {
		in.Health = apipb.Health_HEALTH_CRITICAL
	}
	for i, p := range ports {
		s.Ports = append(s.Ports, &apipb.ServicePort{Name: p, Protocol: apipb.Protocol_PROTOCOL_TCP})
		in.Ports[p] = uint32(8080 + i)
	}
	ts.index++
	if _, err := ts.store.ApplyCommand(ts.index, state.RegisterCommand(&apipb.RegisterRequest{Service: s, Instance: in})); err != nil {
		t.Fatal(err)
	}
}

// start runs a DNS server on loopback port 0 over a real store's watch.
func start(t testing.TB, peerOrder ...string) *testServer {
	return startWith(t, nil, peerOrder)
}

func startWith(t testing.TB, upstreams, peerOrder []string) *testServer {
	t.Helper()
	return startCfg(t, func(c *dns.Config) { c.Upstreams, c.PeerOrder = upstreams, peerOrder })
}

// startCfg is start with the config as edit leaves it.
func startCfg(t testing.TB, edit func(*dns.Config)) *testServer {
	t.Helper()
	st := state.NewStore(0)
	pc, ln, err := dns.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := dns.Config{PacketConn: pc, Listener: ln, Site: "aws-east", Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Watch:  func(ctx context.Context, from uint64) (dns.Watcher, error) { return st.Subscribe(from), nil }}
	edit(&cfg)
	srv, err := dns.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	controlplanetest.WaitFor(t, 5*time.Second, func() error {
		if !srv.Ready() {
			return fmt.Errorf("not ready")
		}
		return nil
	})
	return &testServer{srv: srv, addr: pc.LocalAddr().String(), store: st, reg: reg}
}

func exchange(t testing.TB, addr, name string, qtype uint16, netw string) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	c := &mdns.Client{Net: netw, Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, mdns.TypeToString[qtype], netw, err)
	}
	return r
}

// waitAnswers waits until the view reflects the store (the watch is async).
func waitAnswers(t testing.TB, addr, name string, n int) {
	t.Helper()
	controlplanetest.WaitFor(t, 5*time.Second, func() error {
		if r := exchange(t, addr, name, mdns.TypeA, "udp"); len(r.Answer) != n {
			return fmt.Errorf("%s: %d answers, want %d", name, len(r.Answer), n)
		}
		return nil
	})
}

type dnsCase struct {
	name   string
	qname  string
	qtype  uint16
	rcode  int
	answer []string // sorted RR strings, TTL included
	ns     []string // record types in authority
	extra  int
}

func TestMeshNames(t *testing.T) {
	ts := start(t)
	ts.register(t, "payments", "api", "api-1", "10.0.0.1", true, "http")
	ts.register(t, "payments", "api", "api-2", "10.0.0.2", true, "http")
	ts.register(t, "payments", "api", "api-3", "10.0.0.3", false, "http") // critical
	ts.register(t, "payments", "db", "db-1", "fd00::5", true, "sql")
	waitAnswers(t, ts.addr, "api.payments.aws-east.mesh", 2)

	tests := []dnsCase{
		{"service A at the site", "api.payments.aws-east.mesh.", mdns.TypeA, mdns.RcodeSuccess,
			[]string{"api.payments.aws-east.mesh.\t5\tIN\tA\t10.0.0.1", "api.payments.aws-east.mesh.\t5\tIN\tA\t10.0.0.2"}, nil, 0},
		{"service A without site", "api.payments.mesh.", mdns.TypeA, mdns.RcodeSuccess,
			[]string{"api.payments.mesh.\t5\tIN\tA\t10.0.0.1", "api.payments.mesh.\t5\tIN\tA\t10.0.0.2"}, nil, 0},
		{"case insensitive; answers keep the question's case", "API.Payments.AWS-EAST.mesh.", mdns.TypeA, mdns.RcodeSuccess,
			[]string{"API.Payments.AWS-EAST.mesh.\t5\tIN\tA\t10.0.0.1", "API.Payments.AWS-EAST.mesh.\t5\tIN\tA\t10.0.0.2"}, nil, 0},
		{"AAAA of a v4 service is NODATA", "api.payments.aws-east.mesh.", mdns.TypeAAAA, mdns.RcodeSuccess, nil, []string{"SOA"}, 0},
		{"AAAA of a v6 service", "db.payments.aws-east.mesh.", mdns.TypeAAAA, mdns.RcodeSuccess,
			[]string{"db.payments.aws-east.mesh.\t5\tIN\tAAAA\tfd00::5"}, nil, 0},
		{"one instance", "api-1.api.payments.aws-east.mesh.", mdns.TypeA, mdns.RcodeSuccess,
			[]string{"api-1.api.payments.aws-east.mesh.\t5\tIN\tA\t10.0.0.1"}, nil, 0},
		{"critical instance is NODATA", "api-3.api.payments.aws-east.mesh.", mdns.TypeA, mdns.RcodeSuccess, nil, []string{"SOA"}, 0},
		{"SRV with glue", "_http._tcp.api.payments.aws-east.mesh.", mdns.TypeSRV, mdns.RcodeSuccess,
			[]string{"_http._tcp.api.payments.aws-east.mesh.\t5\tIN\tSRV\t1 1 8080 api-1.api.payments.aws-east.mesh.",
				"_http._tcp.api.payments.aws-east.mesh.\t5\tIN\tSRV\t1 1 8080 api-2.api.payments.aws-east.mesh."}, nil, 2},
		{"SRV of an unknown port", "_grpc._tcp.api.payments.aws-east.mesh.", mdns.TypeSRV, mdns.RcodeNameError, nil, []string{"SOA"}, 0},
		{"unknown service", "nope.payments.aws-east.mesh.", mdns.TypeA, mdns.RcodeNameError, nil, []string{"SOA"}, 0},
		{"unknown site", "api.payments.gcp-west.mesh.", mdns.TypeA, mdns.RcodeNameError, nil, []string{"SOA"}, 0},
		{"too many labels", "x.api-1.api.payments.aws-east.mesh.", mdns.TypeA, mdns.RcodeNameError, nil, []string{"SOA"}, 0},
		{"namespace at the site is an empty non-terminal", "payments.aws-east.mesh.", mdns.TypeA, mdns.RcodeSuccess, nil, []string{"SOA"}, 0},
		{"site is an empty non-terminal", "aws-east.mesh.", mdns.TypeA, mdns.RcodeSuccess, nil, []string{"SOA"}, 0},
		{"apex SOA", "mesh.", mdns.TypeSOA, mdns.RcodeSuccess, nil, nil, 0},
		{"outside the domain without upstreams", "example.com.", mdns.TypeA, mdns.RcodeRefused, nil, nil, 0},
	}
	runCases(t, ts.addr, tests)
}

// runCases checks each case over UDP and TCP.
func runCases(t *testing.T, addr string, tests []dnsCase) {
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, netw := range []string{"udp", "tcp"} {
				r := exchange(t, addr, tt.qname, tt.qtype, netw)
				if r.Rcode != tt.rcode {
					t.Fatalf("%s: rcode %s, want %s", netw, mdns.RcodeToString[r.Rcode], mdns.RcodeToString[tt.rcode])
				}
				if tt.answer != nil {
					var got []string
					for _, rr := range r.Answer {
						got = append(got, rr.String())
					}
					slicesSort(got)
					if strings.Join(got, "\n") != strings.Join(tt.answer, "\n") {
						t.Fatalf("%s: answer\n%s\nwant\n%s", netw, strings.Join(got, "\n"), strings.Join(tt.answer, "\n"))
					}
				}
				if tt.qtype == mdns.TypeSOA && (len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != mdns.TypeSOA) {
					t.Fatalf("%s: apex SOA answer %v", netw, r.Answer)
				}
				var nsTypes []string
				for _, rr := range r.Ns {
					nsTypes = append(nsTypes, mdns.TypeToString[rr.Header().Rrtype])
				}
				if strings.Join(nsTypes, ",") != strings.Join(tt.ns, ",") {
					t.Fatalf("%s: authority %v, want %v", netw, nsTypes, tt.ns)
				}
				if len(r.Extra) != tt.extra {
					t.Fatalf("%s: %d additional records, want %d", netw, len(r.Extra), tt.extra)
				}
				if tt.rcode != mdns.RcodeRefused && !r.Authoritative {
					t.Fatalf("%s: answer not authoritative", netw)
				}
			}
		})
	}
}

func TestTruncationAndTCP(t *testing.T) {
	ts := start(t)
	for i := 0; i < 100; i++ {
		ts.register(t, "default", "big", fmt.Sprintf("i%d", i), fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), true)
	}
	// Over TCP the client gets them all, once the view holds them all.
	// (Waiting on the UDP answer alone could pass with part of the
	// registrations seen: 44 instances are truncated over UDP too.)
	controlplanetest.WaitFor(t, 5*time.Second, func() error {
		if r := exchange(t, ts.addr, "big.default.aws-east.mesh", mdns.TypeA, "tcp"); r.Truncated || len(r.Answer) != 100 {
			return fmt.Errorf("tcp: truncated=%v with %d answers", r.Truncated, len(r.Answer))
		}
		return nil
	})
	// Over UDP the answer is cut to fit 512 bytes and marked truncated.
	r := exchange(t, ts.addr, "big.default.aws-east.mesh", mdns.TypeA, "udp")
	if !r.Truncated || len(r.Answer) == 0 || len(r.Answer) >= 100 {
		t.Fatalf("udp: truncated=%v with %d answers", r.Truncated, len(r.Answer))
	}
	r.Compress = true // it went out compressed; Len measures uncompressed otherwise
	if r.Len() > 512 {
		t.Fatalf("udp answer is %d bytes", r.Len())
	}
	// EDNS0 with a larger buffer fits more over UDP.
	m := new(mdns.Msg)
	m.SetQuestion("big.default.aws-east.mesh.", mdns.TypeA)
	m.SetEdns0(4096, false)
	r, _, err := (&mdns.Client{Timeout: 3 * time.Second, UDPSize: 4096}).Exchange(m, ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 100 || r.IsEdns0() == nil {
		t.Fatalf("edns0: truncated=%v answers=%d opt=%v", r.Truncated, len(r.Answer), r.IsEdns0())
	}
}

func TestForwarding(t *testing.T) {
	// A real upstream: another miekg server answering example.com.
	up, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := mdns.NewServeMux()
	var sawSubnet atomic.Bool
	mux.HandleFunc("example.com.", func(w mdns.ResponseWriter, r *mdns.Msg) {
		if opt := r.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				if _, ok := o.(*mdns.EDNS0_SUBNET); ok {
					sawSubnet.Store(true)
				}
			}
		}
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: "example.com.", Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.7")}}
		w.WriteMsg(m)
	})
	upSrv := &mdns.Server{PacketConn: up, Handler: mux}
	go upSrv.ActivateAndServe()
	t.Cleanup(func() { upSrv.Shutdown() })

	ts := startWith(t, []string{up.LocalAddr().String()}, nil)
	m := new(mdns.Msg)
	m.SetQuestion("example.com.", mdns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_SUBNET{Code: mdns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.ParseIP("198.51.100.0").To4()})
	r, _, err := (&mdns.Client{Timeout: 3 * time.Second}).Exchange(m, ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 || !strings.Contains(r.Answer[0].String(), "192.0.2.7") {
		t.Fatalf("forwarded answer %v", r.Answer)
	}
	if !sawSubnet.Load() {
		t.Fatal("the client subnet option was not passed upstream")
	}
}

func TestMalformedQueries(t *testing.T) {
	ts := start(t)
	conn, err := net.Dial("udp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Garbage gets no answer (or FORMERR), and the server keeps serving.
	conn.Write([]byte{0, 1, 2, 3, 4, 5, 6})
	m := new(mdns.Msg)
	m.SetQuestion("mesh.", mdns.TypeSOA)
	m.Question = append(m.Question, m.Question[0]) // two questions: FORMERR
	r, _, err := (&mdns.Client{Timeout: 3 * time.Second}).Exchange(m, ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != mdns.RcodeFormatError {
		t.Fatalf("two questions: %s, want FORMERR", mdns.RcodeToString[r.Rcode])
	}
	if r := exchange(t, ts.addr, "mesh.", mdns.TypeSOA, "udp"); r.Rcode != mdns.RcodeSuccess {
		t.Fatal("server stopped answering after malformed input")
	}
}

func slicesSort(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// lockedBuffer is a log destination safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Run says where it serves (strait dns and strait server print it).
func TestRunLogsAddresses(t *testing.T) {
	var logs lockedBuffer
	ts := startCfg(t, func(c *dns.Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	out := logs.String()
	if !strings.Contains(out, "level=INFO msg=\"dns serving\" udp="+ts.addr+" tcp="+ts.addr) {
		t.Fatalf("no start line with the addresses:\n%s", out)
	}
}

// TestTCPConnectionsBounded: one address holds at most
// MaxTCPConnectionsPerSource TCP connections; the next is closed at once
// and counted, and other clients are still answered over TCP.
func TestTCPConnectionsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := acceptloop.NewMetrics(reg)
	ts := startCfg(t, func(c *dns.Config) { c.AcceptMetrics = m })
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.7")}}
	for range dns.MaxTCPConnectionsPerSource {
		c, err := d.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	// The next from that address is closed unanswered.
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		c, err := d.Dial("tcp", ts.addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			return fmt.Errorf("connection %d from one address was served", dns.MaxTCPConnectionsPerSource+1)
		}
		return nil
	})
	refused := 0.0
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "strait_accept_refused_total" {
			for _, mt := range f.Metric {
				refused += mt.GetCounter().GetValue()
			}
		}
	}
	if refused < 1 {
		t.Fatalf("refusals counted: %v", refused)
	}
	if r := exchange(t, ts.addr, "nothing.default.aws-east.mesh", mdns.TypeA, "tcp"); r == nil {
		t.Fatal("no answer over TCP for another client")
	}
}
