package dns

import (
	"context"
	"errors"
	"net"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// The UDP loop reads and writes packets in batches (recvmmsg/sendmmsg on
// Linux) and answers mesh names inline: one goroutine, no allocation of a
// goroutine per query. Queries to forward upstream wait on the network, so
// they are answered from their own goroutine.

const (
	udpBatch        = 64
	udpSocketBuffer = 8 << 20
)

type packetWriter struct {
	local, remote net.Addr
	out           *mdns.Msg
	direct        net.PacketConn // set for forwarded queries: write at once
}

func (w *packetWriter) LocalAddr() net.Addr  { return w.local }
func (w *packetWriter) RemoteAddr() net.Addr { return w.remote }
func (w *packetWriter) WriteMsg(m *mdns.Msg) error {
	if w.direct == nil {
		w.out = m
		return nil
	}
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.direct.WriteTo(b, w.remote)
	return err
}
func (w *packetWriter) Write(b []byte) (int, error) { return 0, errors.New("dns: use WriteMsg") }
func (w *packetWriter) Close() error                { return nil }
func (w *packetWriter) TsigStatus() error           { return nil }
func (w *packetWriter) TsigTimersOnly(bool)         {}
func (w *packetWriter) Hijack()                     {}

// serveUDP answers queries on pc until it is closed.
func (s *Server) serveUDP(ctx context.Context, pc net.PacketConn) error {
	// Bursts of queries must wait in the socket, not be dropped by the
	// kernel while a batch is answered (the OS caps this at rmem_max).
	if uc, ok := pc.(*net.UDPConn); ok {
		uc.SetReadBuffer(udpSocketBuffer)
		uc.SetWriteBuffer(udpSocketBuffer)
	}
	p := ipv4.NewPacketConn(pc)
	in := make([]ipv4.Message, udpBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 65535)}
	}
	// Responses are written into per-slot buffers; the messages pointing
	// at them are reused, so a batch allocates nothing on the fast path.
	slots := make([]ipv4.Message, udpBatch)
	bufs := make([][]byte, udpBatch)
	for i := range slots {
		bufs[i] = make([]byte, 0, 4096)
		slots[i].Buffers = [][]byte{nil}
	}
	for {
		n, err := p.ReadBatch(in, 0)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		k := 0
		emit := func(b []byte, to net.Addr) {
			slots[k].Buffers[0], slots[k].Addr = b, to
			k++
		}
		for i := 0; i < n; i++ {
			m := &in[i]
			raw := m.Buffers[0][:m.N]
			if b, ok := s.fastAnswer(raw, bufs[k]); ok {
				emit(b, m.Addr)
				continue
			}
			req := new(mdns.Msg)
			if err := req.Unpack(raw); err != nil {
				continue // not a DNS message: no answer
			}
			w := &packetWriter{local: pc.LocalAddr(), remote: m.Addr}
			if len(req.Question) == 1 && !s.inDomain(mdns.CanonicalName(req.Question[0].Name)) {
				w.direct = pc
				go s.ServeDNS(w, req)
				continue
			}
			s.ServeDNS(w, req)
			if w.out == nil {
				continue
			}
			b, err := w.out.PackBuffer(bufs[k][:0])
			if err != nil {
				continue
			}
			emit(b, m.Addr)
		}
		out := slots[:k]
		for len(out) > 0 {
			k, err := p.WriteBatch(out, 0)
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					return nil
				}
				s.cfg.Logger.Debug("dns udp write failed", "err", err)
				break
			}
			out = out[k:]
		}
	}
}
