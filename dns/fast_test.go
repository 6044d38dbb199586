package dns

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// udpWriter collects the general path's response as a UDP client would
// get it.
type udpWriter struct{ out *mdns.Msg }

func (w *udpWriter) LocalAddr() net.Addr         { return &net.UDPAddr{} }
func (w *udpWriter) RemoteAddr() net.Addr        { return &net.UDPAddr{} }
func (w *udpWriter) WriteMsg(m *mdns.Msg) error  { w.out = m; return nil }
func (w *udpWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *udpWriter) Close() error                { return nil }
func (w *udpWriter) TsigStatus() error           { return nil }
func (w *udpWriter) TsigTimersOnly(bool)         {}
func (w *udpWriter) Hijack()                     {}

// fastTestServer is a server whose view is fed directly (no watch runs).
func fastTestServer(t testing.TB) *Server {
	s, err := New(Config{Site: "aws-east", PeerOrder: []string{"dc1"},
		Watch: func(context.Context, uint64) (Watcher, error) { return nil, fmt.Errorf("unused") }})
	if err != nil {
		t.Fatal(err)
	}
	var ch []*apipb.Change
	svc := func(peer, ns, name, vip string) {
		ch = append(ch, &apipb.Change{Change: &apipb.Change_Service{Service: &apipb.Service{Peer: peer, Namespace: ns, Name: name, VirtualIp: vip,
			Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}}}})
	}
	inst := func(peer, ns, name, id, addr string, h apipb.Health) {
		ch = append(ch, &apipb.Change{Change: &apipb.Change_Instance{Instance: &apipb.Instance{Peer: peer, Namespace: ns, Service: name, Id: id, Address: addr,
			Ports: map[string]uint32{"http": 8080}, Health: h}}})
	}
	pass, crit := apipb.Health_HEALTH_PASSING, apipb.Health_HEALTH_CRITICAL
	svc("", "payments", "api", "")
	inst("", "payments", "api", "a1", "10.0.0.1", pass)
	inst("", "payments", "api", "a2", "10.0.0.2", pass)
	inst("", "payments", "api", "a3", "10.0.0.3", crit)
	svc("", "payments", "db", "")
	inst("", "payments", "db", "d1", "fd00::1", pass)
	inst("", "payments", "db", "d2", "10.0.1.1", pass)
	svc("", "payments", "big", "") // more than fits in 512 bytes
	for i := range 100 {
		inst("", "payments", "big", fmt.Sprintf("b%d", i), fmt.Sprintf("10.1.0.%d", i), pass)
	}
	svc("", "payments", "down", "")
	inst("", "payments", "down", "x1", "10.0.2.1", crit)
	svc("gcp-west", "payments", "down", "127.240.0.1")
	inst("gcp-west", "payments", "down", "r1", "10.8.0.1", pass)
	svc("dc1", "payments", "down", "127.240.0.2")
	inst("dc1", "payments", "down", "r2", "10.9.0.1", pass)
	svc("gcp-west", "web", "front", "127.240.0.3")
	inst("gcp-west", "web", "front", "f1", "10.8.0.2", pass)
	svc("", "aws-east", "payments", "") // a service whose name reads like <ns>.<site>
	inst("", "aws-east", "payments", "p1", "10.0.3.1", pass)
	s.view.apply(&apipb.WatchEvent{Index: 1, Resync: true, Synced: true, Changes: ch})
	return s
}

func query(name string, qtype uint16, edns int) []byte {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0x1234
	if edns > 0 {
		m.SetEdns0(uint16(edns), false)
	}
	b, _ := m.Pack()
	return b
}

func rrStrings(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, strings.ToLower(rr.String()))
	}
	slices.Sort(out)
	return out
}

// checkAgainstGeneral compares the fast path's answer to raw with the
// general path's; it reports whether the fast path answered.
func checkAgainstGeneral(t *testing.T, s *Server, raw []byte) bool {
	t.Helper()
	fast, ok := s.fastAnswer(raw, nil)
	if !ok {
		return false
	}
	var got mdns.Msg
	if err := got.Unpack(fast); err != nil {
		t.Fatalf("fast path wrote an undecodable response: %v", err)
	}
	var req mdns.Msg
	if err := req.Unpack(raw); err != nil {
		t.Fatalf("fast path answered a query the general path cannot decode (%v)", err)
	}
	want, _ := s.answer(&net.UDPAddr{}, &req)
	if got.Id != want.Id || got.Rcode != want.Rcode || got.Authoritative != want.Authoritative || got.Truncated != want.Truncated ||
		got.RecursionDesired != want.RecursionDesired || got.RecursionAvailable != want.RecursionAvailable || !got.Response {
		t.Fatalf("header differs:\nfast    %v\ngeneral %v", got.MsgHdr, want.MsgHdr)
	}
	if len(got.Question) != 1 || got.Question[0] != req.Question[0] {
		t.Fatalf("question %v, want %v", got.Question, req.Question)
	}
	ga, wa := rrStrings(got.Answer), rrStrings(want.Answer)
	if len(ga) != len(wa) {
		t.Fatalf("%d answers, general path %d:\n%v\n%v", len(ga), len(wa), ga, wa)
	}
	if !got.Truncated && !slices.Equal(ga, wa) {
		t.Fatalf("answers differ:\nfast    %v\ngeneral %v", ga, wa)
	}
	if len(got.Ns) != 0 || len(want.Ns) != 0 {
		t.Fatalf("authority on a positive answer: %v / %v", got.Ns, want.Ns)
	}
	if (got.IsEdns0() == nil) != (want.IsEdns0() == nil) || (got.IsEdns0() != nil && got.IsEdns0().UDPSize() != want.IsEdns0().UDPSize()) {
		t.Fatalf("EDNS0 differs: %v / %v", got.IsEdns0(), want.IsEdns0())
	}
	return true
}

func TestFastPathMatchesGeneralPath(t *testing.T) {
	s := fastTestServer(t)
	tests := []struct {
		name  string
		qtype uint16
		edns  int
		fast  bool
	}{
		{"api.payments.aws-east.mesh.", mdns.TypeA, 0, true},
		{"API.payments.Aws-East.MESH.", mdns.TypeA, 0, true},
		{"api.payments.mesh.", mdns.TypeA, 1232, true},
		{"db.payments.mesh.", mdns.TypeAAAA, 0, true},
		{"db.payments.mesh.", mdns.TypeA, 0, true},
		{"big.payments.mesh.", mdns.TypeA, 0, true},    // truncated at 512
		{"big.payments.mesh.", mdns.TypeA, 4096, true}, // all fit
		{"down.payments.mesh.", mdns.TypeA, 0, true},   // fails over to dc1
		{"down.payments.gcp-west.mesh.", mdns.TypeA, 0, true},
		{"front.web.mesh.", mdns.TypeA, 0, true},
		{"api.payments.aws-east.mesh.", mdns.TypeAAAA, 0, false}, // NODATA
		{"nope.payments.mesh.", mdns.TypeA, 0, false},            // NXDOMAIN
		{"a1.api.payments.aws-east.mesh.", mdns.TypeA, 0, false}, // instance
		{"_http._tcp.api.payments.mesh.", mdns.TypeSRV, 0, false},
		{"payments.aws-east.mesh.", mdns.TypeA, 0, false}, // <ns>.<site>
		{"example.com.", mdns.TypeA, 0, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/edns=%d", tt.name, mdns.TypeToString[tt.qtype], tt.edns), func(t *testing.T) {
			if got := checkAgainstGeneral(t, s, query(tt.name, tt.qtype, tt.edns)); got != tt.fast {
				t.Fatalf("fast path answered: %v, want %v", got, tt.fast)
			}
		})
	}
}

func FuzzFastPath(f *testing.F) {
	for _, q := range []string{"api.payments.aws-east.mesh.", "big.payments.mesh.", "down.payments.mesh.", "db.payments.mesh."} {
		f.Add(query(q, mdns.TypeA, 0))
		f.Add(query(q, mdns.TypeAAAA, 1400))
	}
	s := fastTestServer(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkAgainstGeneral(t, s, raw)
	})
}

// BenchmarkPacket: request bytes to response bytes, as the UDP loop does
// it, for a service with two passing instances: the fast path against the
// general path (decode, answer, encode).
func BenchmarkPacket(b *testing.B) {
	s := fastTestServer(b)
	raw := query("api.payments.aws-east.mesh.", mdns.TypeA, 0)
	buf := make([]byte, 0, 4096)
	b.Run("path=fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := s.fastAnswer(raw, buf); !ok {
				b.Fatal("not answered")
			}
		}
	})
	b.Run("path=general", func(b *testing.B) {
		b.ReportAllocs()
		w := &udpWriter{}
		for b.Loop() {
			req := new(mdns.Msg)
			if err := req.Unpack(raw); err != nil {
				b.Fatal(err)
			}
			s.ServeDNS(w, req)
			if _, err := w.out.PackBuffer(buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
