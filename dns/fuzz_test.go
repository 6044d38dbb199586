package dns_test

import (
	"net"
	"testing"

	mdns "github.com/miekg/dns"
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
