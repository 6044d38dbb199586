package dns_test

import (
	"encoding/binary"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/straitmesh/strait/dns"
)

// memWriter is an in-memory ResponseWriter: fuzzing needs no sockets.
type memWriter struct {
	tcp bool
	out *mdns.Msg
}

func (w *memWriter) LocalAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (w *memWriter) RemoteAddr() net.Addr {
	if w.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
}
func (w *memWriter) WriteMsg(m *mdns.Msg) error { w.out = m; return nil }
func (w *memWriter) Write(b []byte) (int, error) {
	return len(b), nil
}
func (w *memWriter) Close() error        { return nil }
func (w *memWriter) TsigStatus() error   { return nil }
func (w *memWriter) TsigTimersOnly(bool) {}
func (w *memWriter) Hijack()             {}

func FuzzServeDNS(f *testing.F) {
	ts := start(f)
	ts.register(f, "payments", "api", "api-1", "10.0.0.1", true, "http")
	waitAnswers(f, ts.addr, "api.payments.aws-east.mesh", 1)
	for _, q := range []struct {
		name string
		t    uint16
	}{{"api.payments.aws-east.mesh.", mdns.TypeA}, {"_http._tcp.api.payments.mesh.", mdns.TypeSRV}, {"mesh.", mdns.TypeSOA}} {
		m := new(mdns.Msg)
		m.SetQuestion(q.name, q.t)
		b, _ := m.Pack()
		f.Add(b, false)
	}
	f.Fuzz(func(t *testing.T, b []byte, tcp bool) {
		req := new(mdns.Msg)
		if err := req.Unpack(b); err != nil {
			return
		}
		w := &memWriter{tcp: tcp}
		ts.srv.ServeDNS(w, req)
		if w.out == nil {
			return
		}
		if w.out.Id != req.Id {
			t.Fatalf("reply id %d for query %d", w.out.Id, req.Id)
		}
		if _, err := w.out.Pack(); err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
		if !tcp {
			w.out.Compress = true
			if w.out.Len() > 4096 {
				t.Fatalf("udp reply of %d bytes", w.out.Len())
			}
		}
	})
}

// fuzzUpstream is what the fake upstream of FuzzForward sends for each
// query, over UDP (in order) and over TCP (the first only).
type fuzzUpstream struct {
	raw  []byte
	mode uint8
}

// Modes of fuzzUpstream: which replies, and how they are wrong.
const (
	fuzzRaw           = 1 << iota // send raw first
	fuzzRawID                     // ... with the query's ID
	fuzzAnswer                    // then a well-formed answer
	fuzzTC                        // ... with TC set over UDP (whole over TCP)
	fuzzOversized                 // ... of 60 TXT records (61 KB)
	fuzzWrongQuestion             // ... to another question
	fuzzWrongID                   // ... under another ID
)

func (u *fuzzUpstream) replies(q *mdns.Msg, tcp bool) [][]byte {
	var out [][]byte
	if u.mode&fuzzRaw != 0 {
		b := slices.Clone(u.raw)
		if u.mode&fuzzRawID != 0 && len(b) >= 2 {
			binary.BigEndian.PutUint16(b, q.Id)
		}
		out = append(out, b)
	}
	if u.mode&fuzzAnswer != 0 && len(q.Question) == 1 {
		m := new(mdns.Msg)
		if u.mode&fuzzOversized != 0 {
			m = bigTXT(q)
		} else {
			m.SetReply(q)
			m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)}}
		}
		m.Truncated = u.mode&fuzzTC != 0 && !tcp
		if m.Truncated {
			m.Answer = m.Answer[:1]
		}
		if u.mode&fuzzWrongQuestion != 0 {
			m.Question[0].Name = "other.example."
		}
		if u.mode&fuzzWrongID != 0 {
			m.Id ^= 0x5a5a
		}
		if b, err := m.Pack(); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// fakeUpstream serves the case in cur on a loopback UDP socket and the TCP
// port of the same number, for the life of tb.
func fakeUpstream(tb testing.TB, cur *atomic.Pointer[fuzzUpstream]) string {
	pc, ln, err := dns.Listen("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close(); ln.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(mdns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			for _, b := range cur.Load().replies(q, false) {
				pc.WriteTo(b, from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				b := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, b); err != nil {
					return
				}
				q := new(mdns.Msg)
				if q.Unpack(b) != nil {
					return
				}
				if rs := cur.Load().replies(q, true); len(rs) > 0 {
					binary.BigEndian.PutUint16(l[:], uint16(len(rs[0])))
					c.Write(append(l[:], rs[0]...))
				}
			}()
		}
	}()
	return pc.LocalAddr().String()
}

// FuzzForward drives the forwarding path, UDP loop and TCP server, with
// fuzzed upstream answers: garbage, TC, oversized, wrong IDs and
// questions. Properties: a reply always comes; over UDP it fits the
// client's size; it carries the query's ID and question, as asked.
func FuzzForward(f *testing.F) {
	var cur atomic.Pointer[fuzzUpstream]
	cur.Store(&fuzzUpstream{})
	up := fakeUpstream(f, &cur)
	ts := startCfg(f, func(c *dns.Config) { c.Upstreams, c.UpstreamTimeout = []string{up}, 100*time.Millisecond })
	garbage := []byte{0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 3, 'f', 'o', 'o', 0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4}
	for _, c := range []struct {
		raw   []byte
		mode  uint8
		qtype uint16
		edns  uint16
		tcp   bool
	}{
		{nil, fuzzAnswer, mdns.TypeA, 0, false},
		{nil, fuzzAnswer | fuzzTC, mdns.TypeTXT, 0, false},
		{nil, fuzzAnswer | fuzzTC | fuzzOversized, mdns.TypeTXT, 1232, false},
		{nil, fuzzAnswer | fuzzTC | fuzzOversized, mdns.TypeTXT, 0, true},
		{nil, fuzzAnswer | fuzzOversized, mdns.TypeTXT, 4096, false},
		{garbage, fuzzRaw | fuzzRawID | fuzzAnswer, mdns.TypeA, 0, false},
		{garbage, fuzzRaw, mdns.TypeA, 512, false},
		{nil, fuzzAnswer | fuzzWrongQuestion, mdns.TypeA, 0, false},
		{nil, fuzzAnswer | fuzzWrongID, mdns.TypeAAAA, 0, true},
	} {
		f.Add(c.raw, c.mode, c.qtype, c.edns, c.tcp)
	}
	f.Fuzz(func(t *testing.T, raw []byte, mode uint8, qtype, edns uint16, tcp bool) {
		cur.Store(&fuzzUpstream{raw: raw, mode: mode})
		q := new(mdns.Msg)
		q.SetQuestion("Fuzz.Example.org.", qtype)
		size := 512
		if edns > 0 {
			q.SetEdns0(edns, false)
			size = max(512, min(int(edns), 4096))
		}
		b, err := q.Pack()
		if err != nil {
			return
		}
		var r *mdns.Msg
		if tcp {
			if r, _, err = (&mdns.Client{Net: "tcp", Timeout: 10 * time.Second}).Exchange(q, ts.addr); err != nil {
				t.Fatalf("tcp: %v", err)
			}
		} else {
			reply := udpQuery(t, ts.addr, b)
			if len(reply) > size {
				t.Fatalf("UDP reply of %d bytes; the client takes %d", len(reply), size)
			}
			r = new(mdns.Msg)
			if err := r.Unpack(reply); err != nil {
				t.Fatalf("reply does not unpack: %v", err)
			}
		}
		if r.Id != q.Id || !r.Response || len(r.Question) != 1 || r.Question[0] != q.Question[0] {
			t.Fatalf("reply id %d question %v to query %d %v", r.Id, r.Question, q.Id, q.Question)
		}
		if mode&fuzzRaw == 0 && mode&(fuzzWrongQuestion|fuzzWrongID) != 0 && len(r.Answer) > 0 {
			t.Fatalf("an answer with the wrong ID or question was taken: %v", r.Answer)
		}
	})
}
