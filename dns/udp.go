package dns

import (
	"context"
	"errors"
	"net"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// The UDP loop reads and writes packets in batches (recvmmsg/sendmmsg on
// Linux) and answers mesh names, and every refusal, inline: one goroutine,
// no allocation of a goroutine per query. Queries to forward upstream wait
// on the network, so each is answered from a goroutine of its own, which
// exists only while it holds one of the forwarder's slots (MaxForwards in
// all); without a free slot, the loop answers SERVFAIL inline.

const (
	udpBatch        = 64
	udpSocketBuffer = 8 << 20
)

// forwardUDP answers req from the upstreams and sends the reply to the
// client at once; it holds a forwarding slot, which it releases.
func (s *Server) forwardUDP(pc net.PacketConn, to net.Addr, req *mdns.Msg, start time.Time) {
	defer s.fwd.release()
	resp := s.forward(req, false)
	b, err := resp.Pack()
	if err == nil {
		_, err = pc.WriteTo(b, to)
	}
	if err != nil {
		s.cfg.Logger.Debug("dns udp write failed", "err", err)
	}
	s.observe(req, resp, start)
}

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
			start := time.Now()
			resp, fwd := s.answer(m.Addr, req)
			if fwd {
				if s.fwd.acquire() {
					go s.forwardUDP(pc, m.Addr, req, start)
					continue
				}
				resp = s.overloaded(req)
			}
			s.observe(req, resp, start)
			b, err := resp.PackBuffer(bufs[k][:0])
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
