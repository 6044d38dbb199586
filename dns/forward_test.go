package dns_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/dns"
)

// counter is the value of a counter series in ts's registry (0 when the
// series does not exist); labels are name=value pairs.
func (ts *testServer) counter(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// upstreamServer runs a miekg server on a loopback UDP socket and the TCP
// port of the same number.
func upstreamServer(t testing.TB, h mdns.HandlerFunc) string {
	t.Helper()
	pc, ln, err := dns.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &mdns.Server{PacketConn: pc, Handler: h}
	tc := &mdns.Server{Listener: ln, Handler: h}
	go u.ActivateAndServe()
	go tc.ActivateAndServe()
	t.Cleanup(func() { u.Shutdown(); tc.Shutdown() })
	return pc.LocalAddr().String()
}

// bigTXT is an answer of about 61 KB: 60 TXT records of 1,004 bytes.
func bigTXT(r *mdns.Msg) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetReply(r)
	chunk := strings.Repeat("x", 250)
	for range 60 {
		m.Answer = append(m.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeTXT, Class: mdns.ClassINET, Ttl: 60},
			Txt: []string{chunk, chunk, chunk, chunk}})
	}
	return m
}

// udpQuery sends a packed query over UDP and returns the reply's bytes as
// they came (any size).
func udpQuery(t testing.TB, server string, query []byte) []byte {
	t.Helper()
	c, err := net.Dial("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(query); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no reply: %v", err)
	}
	return buf[:n]
}

// H4: an upstream that answers TC over UDP and 61 KB over TCP must not
// make us send 61 KB over UDP to a 33-byte query.
func TestForwardedAnswerFitsUDP(t *testing.T) {
	up := upstreamServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		if _, tcp := w.RemoteAddr().(*net.TCPAddr); tcp {
			w.WriteMsg(bigTXT(r))
			return
		}
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Truncated = true
		w.WriteMsg(m)
	})
	ts := startWith(t, []string{up}, nil)

	for _, tt := range []struct {
		name string
		edns uint16 // 0: none
		max  int
	}{{"no EDNS0: 512 bytes", 0, 512}, {"EDNS0 1232", 1232, 1232}, {"EDNS0 65535 is held to 4096", 65535, 4096}} {
		t.Run(tt.name, func(t *testing.T) {
			q := new(mdns.Msg)
			q.SetQuestion("big.example.org.", mdns.TypeTXT)
			if tt.edns > 0 {
				q.SetEdns0(tt.edns, false)
			}
			b, err := q.Pack()
			if err != nil {
				t.Fatal(err)
			}
			if tt.edns == 0 && len(b) != 33 {
				t.Fatalf("query of %d bytes, want 33", len(b))
			}
			raw := udpQuery(t, ts.addr, b)
			if len(raw) > tt.max {
				t.Fatalf("UDP reply of %d bytes to a %d-byte query; the client takes %d", len(raw), len(b), tt.max)
			}
			r := new(mdns.Msg)
			if err := r.Unpack(raw); err != nil {
				t.Fatal(err)
			}
			if !r.Truncated || r.Id != q.Id || len(r.Question) != 1 || r.Question[0] != q.Question[0] {
				t.Fatalf("reply: tc=%v id=%d (query %d) question %v", r.Truncated, r.Id, q.Id, r.Question)
			}
			if (r.IsEdns0() != nil) != (tt.edns > 0) {
				t.Fatalf("OPT in the reply: %v, in the query: %v", r.IsEdns0() != nil, tt.edns > 0)
			}
		})
	}
	// Over TCP the client gets the whole answer.
	r := exchange(t, ts.addr, "big.example.org.", mdns.TypeTXT, "tcp")
	if r.Truncated || len(r.Answer) != 60 {
		t.Fatalf("tcp: tc=%v with %d of 60 records", r.Truncated, len(r.Answer))
	}
	if n := ts.counter(t, "strait_dns_truncated_total", "answer", "forwarded"); n != 3 {
		t.Fatalf("strait_dns_truncated_total{answer=forwarded} = %v, want 3", n)
	}
}

// An upstream that sends an answer larger than the client allows over UDP
// (without TC) gets it cut too.
func TestForwardedOversizedUDPAnswerIsTruncated(t *testing.T) {
	up := upstreamServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) { w.WriteMsg(bigTXT(r)) })
	ts := startWith(t, []string{up}, nil)
	q := new(mdns.Msg)
	q.SetQuestion("big.example.org.", mdns.TypeTXT)
	q.SetEdns0(1232, false)
	b, _ := q.Pack()
	raw := udpQuery(t, ts.addr, b)
	r := new(mdns.Msg)
	if err := r.Unpack(raw); err != nil {
		t.Fatal(err)
	}
	if len(raw) > 1232 || !r.Truncated || len(r.Answer) == 0 {
		t.Fatalf("%d bytes, tc=%v, %d records", len(raw), r.Truncated, len(r.Answer))
	}
}

// The socket pool hands out only the answer that matches the query: a
// reply with the query's ID but another question, and one with the right
// question but another ID, come first and are ignored.
func TestForwardIgnoresMismatchedAnswers(t *testing.T) {
	up, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	answer := func(q *mdns.Msg, id uint16, name, addr string) []byte {
		m := new(mdns.Msg)
		m.SetReply(q)
		m.Id = id
		m.Question[0].Name = name
		m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.ParseIP(addr)}}
		b, _ := m.Pack()
		return b
	}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := up.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(mdns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			name := q.Question[0].Name
			up.WriteTo(answer(q, q.Id, "evil.example.org.", "203.0.113.66"), from)
			up.WriteTo(answer(q, q.Id+1, name, "203.0.113.67"), from)
			up.WriteTo(answer(q, q.Id, strings.ToLower(name), "192.0.2.7"), from)
		}
	}()
	ts := startWith(t, []string{up.LocalAddr().String()}, nil)
	for i := range 20 {
		name := fmt.Sprintf("Host%d.Example.org.", i)
		for _, netw := range []string{"udp", "tcp"} {
			r := exchange(t, ts.addr, name, mdns.TypeA, netw)
			if len(r.Answer) != 1 || !strings.Contains(r.Answer[0].String(), "192.0.2.7") {
				t.Fatalf("%s over %s: answer %v", name, netw, r.Answer)
			}
			if r.Question[0].Name != name {
				t.Fatalf("question %q, asked %q", r.Question[0].Name, name)
			}
		}
	}
}

func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}

// H1(a): a flood of names to forward to an upstream that never answers
// holds at most MaxForwards goroutines and no socket per query; the excess
// get SERVFAIL at once, and mesh names are answered throughout.
func TestForwardingBounded(t *testing.T) {
	const limit, queries = 32, 5000
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { // reads, never answers
		buf := make([]byte, 65535)
		for {
			if _, _, err := silent.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { silent.Close() })
	ts := startCfg(t, func(c *dns.Config) { c.Upstreams, c.MaxForwards = []string{silent.LocalAddr().String()}, limit })
	ts.register(t, "payments", "api", "api-1", "10.0.0.1", true)
	waitAnswers(t, ts.addr, "api.payments.aws-east.mesh", 1)

	client, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var servfails atomic.Int64
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 65535)
		for {
			n, _, err := client.ReadFrom(buf)
			if err != nil {
				return
			}
			var r mdns.Msg
			if r.Unpack(buf[:n]) == nil && r.Rcode == mdns.RcodeServerFailure {
				servfails.Add(1)
			}
		}
	}()
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)
	maxG, maxFD := baseG, baseFD
	sample := func() {
		maxG, maxFD = max(maxG, runtime.NumGoroutine()), max(maxFD, openFDs(t))
	}
	to, _ := net.ResolveUDPAddr("udp", ts.addr)
	for i := range queries {
		m := new(mdns.Msg)
		m.SetQuestion(fmt.Sprintf("n%d.example.org.", i), mdns.TypeA)
		b, _ := m.Pack()
		if _, err := client.WriteTo(b, to); err != nil {
			t.Fatal(err)
		}
		if i%250 == 0 {
			sample()
		}
		if i == queries/2 {
			if r := exchange(t, ts.addr, "api.payments.aws-east.mesh", mdns.TypeA, "udp"); len(r.Answer) != 1 {
				t.Fatalf("mesh name during the flood: %v", r.Answer)
			}
		}
	}
	sample()
	if r := exchange(t, ts.addr, "api.payments.aws-east.mesh", mdns.TypeA, "udp"); len(r.Answer) != 1 {
		t.Fatalf("mesh name after the flood: %v", r.Answer)
	}
	t.Logf("goroutines %d -> %d, open files %d -> %d", baseG, maxG, baseFD, maxFD)
	if maxG > baseG+limit+20 {
		t.Errorf("goroutines grew from %d to %d; the bound is %d forwards", baseG, maxG, limit)
	}
	if maxFD > baseFD+limit+8 {
		t.Errorf("open files grew from %d to %d", baseFD, maxFD)
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if servfails.Load() == 0 || ts.counter(t, "strait_dns_forward_refused_total", "reason", "concurrency") == 0 {
			return errors.New("no query refused for concurrency yet")
		}
		return nil
	})
	client.Close()
	<-readerDone
}

// Names outside the mesh domain are forwarded for the allowed networks
// only; mesh names are answered for everyone.
func TestRecursionACL(t *testing.T) {
	up := upstreamServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.7")}}
		w.WriteMsg(m)
	})
	ts := startCfg(t, func(c *dns.Config) {
		c.Upstreams = []string{up}
		c.AllowRecursionFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	})
	ts.register(t, "payments", "api", "api-1", "10.0.0.1", true)
	waitAnswers(t, ts.addr, "api.payments.aws-east.mesh", 1)

	ask := func(from, name, netw string) *mdns.Msg {
		t.Helper()
		m := new(mdns.Msg)
		m.SetQuestion(name, mdns.TypeA)
		m.SetEdns0(1232, false)
		d := &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(from)}}
		if netw == "tcp" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
		}
		r, _, err := (&mdns.Client{Net: netw, Dialer: d, Timeout: 5 * time.Second}).Exchange(m, ts.addr)
		if err != nil {
			t.Fatalf("%s from %s over %s: %v", name, from, netw, err)
		}
		return r
	}
	for _, netw := range []string{"udp", "tcp"} {
		if r := ask("127.0.0.2", "example.com.", netw); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("%s, allowed client: %s %v", netw, mdns.RcodeToString[r.Rcode], r.Answer)
		}
		r := ask("127.0.0.3", "example.com.", netw)
		if r.Rcode != mdns.RcodeRefused || len(r.Answer) != 0 || r.RecursionAvailable {
			t.Fatalf("%s, other client: %s ra=%v %v", netw, mdns.RcodeToString[r.Rcode], r.RecursionAvailable, r.Answer)
		}
		if opt := r.IsEdns0(); opt == nil || !slices.ContainsFunc(opt.Option, func(o mdns.EDNS0) bool {
			e, ok := o.(*mdns.EDNS0_EDE)
			return ok && e.InfoCode == mdns.ExtendedErrorCodeProhibited
		}) {
			t.Fatalf("%s: refusal without the extended error Prohibited: %v", netw, r.Extra)
		}
		if r := ask("127.0.0.3", "api.payments.aws-east.mesh.", netw); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("%s, mesh name for another client: %s %v", netw, mdns.RcodeToString[r.Rcode], r.Answer)
		}
	}
	if n := ts.counter(t, "strait_dns_forward_refused_total", "reason", "acl"); n != 2 {
		t.Fatalf("strait_dns_forward_refused_total{reason=acl} = %v, want 2", n)
	}
}

func TestDefaultAllowRecursionFrom(t *testing.T) {
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	for _, tt := range []struct {
		name  string
		addrs []netip.Addr
		want  string
	}{
		{"public addresses only: loopback", addrs("203.0.113.5", "2001:db8::1"), "127.0.0.0/8 ::1/128"},
		{"the private ranges the host is in", addrs("10.1.2.3", "203.0.113.5", "192.168.7.1", "fd00::1", "::ffff:10.9.9.9"),
			"127.0.0.0/8 ::1/128 10.0.0.0/8 192.168.0.0/16 fc00::/7"},
		{"shared address space", addrs("100.100.1.1", "172.20.0.1"), "127.0.0.0/8 ::1/128 172.16.0.0/12 100.64.0.0/10"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, p := range dns.DefaultAllowRecursionFrom(tt.addrs) {
				got = append(got, p.String())
			}
			if strings.Join(got, " ") != tt.want {
				t.Fatalf("%v, want %s", got, tt.want)
			}
		})
	}
}
