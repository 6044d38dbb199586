package dns

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// Forwarding. Names outside the mesh domain go to the upstreams, each in
// turn, over a few connected UDP sockets per upstream that all queries
// share (never a socket per query). Each socket has one reader goroutine,
// which hands an answer to the query waiting for it when both its ID and
// its question match. Every query sent gets a fresh random ID, and a
// socket is replaced after rotateAfter queries, so that its source port
// changes too.
//
// An answer with TC set is fetched again over TCP only for a client that
// asked over TCP; a UDP client gets it truncated, as it came, and asks
// again over TCP itself. Whatever the upstream sends, a reply over UDP
// never exceeds the client's size: 512 bytes without EDNS0, else its
// buffer size within [512, 4096] (udpSize).
//
// At most Config.MaxForwards queries are forwarded at once: that bounds
// the goroutines waiting on upstreams, the queries pending on the sockets
// and the TCP connections to upstreams. The excess get SERVFAIL at once.

// DefaultMaxForwards is Config.MaxForwards when zero (README.md says why).
const DefaultMaxForwards = 256

const (
	socketsPerUpstream = 4
	maxUDPSize         = 4096
)

// rotateAfter is the number of queries after which a socket is replaced
// (a variable for tests).
var rotateAfter = 1024

// forwarder holds the upstreams and the forwarding slots.
type forwarder struct {
	slots   chan struct{} // one token per query being forwarded
	ups     []*upstream
	timeout time.Duration // per upstream
	done    chan struct{} // closed by close
	once    sync.Once
}

func newForwarder(addrs []string, limit int, timeout time.Duration) *forwarder {
	f := &forwarder{slots: make(chan struct{}, limit), timeout: timeout, done: make(chan struct{})}
	for _, a := range addrs {
		f.ups = append(f.ups, &upstream{addr: a, done: f.done})
	}
	return f
}

// acquire takes a forwarding slot, or reports false at once when all are
// taken.
func (f *forwarder) acquire() bool {
	select {
	case f.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (f *forwarder) release() { <-f.slots }

// close closes every upstream socket; queries still waiting fail.
func (f *forwarder) close() {
	f.once.Do(func() {
		close(f.done)
		for _, u := range f.ups {
			u.close()
		}
	})
}

// upstream is one resolver and its pool of sockets.
type upstream struct {
	addr   string
	done   <-chan struct{}
	mu     sync.Mutex
	socks  [socketsPerUpstream]*upSocket
	next   int
	closed bool
}

// upSocket is a connected UDP socket to an upstream and the queries
// waiting for an answer on it.
type upSocket struct {
	conn    net.Conn
	uses    int // queries sent; guarded by upstream.mu
	mu      sync.Mutex
	pending map[uint16]*waiter
	retired bool // replaced in the pool: closed once nothing waits on it
}

type waiter struct {
	q  mdns.Question
	ch chan *mdns.Msg // buffered: the reader never blocks
}

func randomID() uint16 {
	var b [2]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint16(b[:])
}

// exchange sends query (packed; its ID is overwritten) over one of u's
// sockets and waits for the answer to question q.
func (u *upstream) exchange(ctx context.Context, query []byte, q mdns.Question) (*mdns.Msg, error) {
	w := &waiter{q: q, ch: make(chan *mdns.Msg, 1)}
	s, id, err := u.send(query, w)
	if err != nil {
		return nil, err
	}
	defer s.unregister(id, w)
	select {
	case m := <-w.ch:
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-u.done:
		return nil, net.ErrClosed
	}
}

// send registers w under a free random ID on the next socket of the pool
// (dialing it, or replacing it when worn) and sends query with that ID.
func (u *upstream) send(query []byte, w *waiter) (*upSocket, uint16, error) {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, 0, net.ErrClosed
	}
	i := u.next
	u.next = (u.next + 1) % socketsPerUpstream
	s := u.socks[i]
	if s != nil && s.uses >= rotateAfter {
		s.retire()
		s, u.socks[i] = nil, nil
	}
	if s == nil {
		c, err := net.Dial("udp", u.addr)
		if err != nil {
			u.mu.Unlock()
			return nil, 0, err
		}
		s = &upSocket{conn: c, pending: map[uint16]*waiter{}}
		u.socks[i] = s
		go s.read()
	}
	s.uses++
	id := s.register(w)
	u.mu.Unlock()
	binary.BigEndian.PutUint16(query, id)
	if _, err := s.conn.Write(query); err != nil {
		s.unregister(id, w)
		return nil, 0, err
	}
	return s, id, nil
}

func (u *upstream) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for i, s := range u.socks {
		if s != nil {
			s.conn.Close()
			u.socks[i] = nil
		}
	}
}

// exchangeTCP asks req again over a TCP connection of its own.
func (u *upstream) exchangeTCP(ctx context.Context, req *mdns.Msg, timeout time.Duration) (*mdns.Msg, error) {
	m := req.Copy()
	m.Id = randomID()
	r, _, err := (&mdns.Client{Net: "tcp", Timeout: timeout}).ExchangeContext(ctx, m, u.addr)
	if err != nil {
		return nil, err
	}
	if !r.Response || !sameQuestion(r, req.Question[0]) {
		return nil, errors.New("upstream answered another question over tcp")
	}
	return r, nil
}

// register files w under a random ID no other query on s holds.
func (s *upSocket) register(w *waiter) uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		// At most MaxForwards IDs of 65,536 are taken: this ends.
		if id := randomID(); s.pending[id] == nil {
			s.pending[id] = w
			return id
		}
	}
}

func (s *upSocket) unregister(id uint16, w *waiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[id] == w {
		delete(s.pending, id)
	}
	if s.retired && len(s.pending) == 0 {
		s.conn.Close()
	}
}

// retire marks s replaced; it closes once no query waits on it.
func (s *upSocket) retire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retired = true
	if len(s.pending) == 0 {
		s.conn.Close()
	}
}

// read hands answers to the queries waiting for them until s is closed.
// Packets that match no waiting query's ID and question are dropped.
func (s *upSocket) read() {
	buf := make([]byte, mdns.MaxMsgSize)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error (ECONNREFUSED): the query times out
		}
		if n < 12 {
			continue
		}
		id := binary.BigEndian.Uint16(buf)
		s.mu.Lock()
		w := s.pending[id]
		s.mu.Unlock()
		if w == nil {
			continue
		}
		m := new(mdns.Msg)
		if m.Unpack(append([]byte(nil), buf[:n]...)) != nil || !m.Response || !sameQuestion(m, w.q) {
			continue
		}
		s.mu.Lock()
		if s.pending[id] == w {
			delete(s.pending, id)
		}
		s.mu.Unlock()
		select {
		case w.ch <- m:
		default:
		}
	}
}

// sameQuestion reports whether m answers q (names compared without case).
func sameQuestion(m *mdns.Msg, q mdns.Question) bool {
	return len(m.Question) == 1 && m.Question[0].Qtype == q.Qtype && m.Question[0].Qclass == q.Qclass &&
		strings.EqualFold(m.Question[0].Name, q.Name)
}

// udpSize is the largest UDP reply req's sender takes.
func udpSize(req *mdns.Msg) int {
	if opt := req.IsEdns0(); opt != nil {
		return max(mdns.MinMsgSize, min(int(opt.UDPSize()), maxUDPSize))
	}
	return mdns.MinMsgSize
}

// forwardBounded forwards req if a slot is free, else answers SERVFAIL.
func (s *Server) forwardBounded(req *mdns.Msg, tcp bool) *mdns.Msg {
	if !s.fwd.acquire() {
		return s.overloaded(req)
	}
	defer s.fwd.release()
	return s.forward(req, tcp)
}

// overloaded is the answer to a query to forward while every slot is
// taken.
func (s *Server) overloaded(req *mdns.Msg) *mdns.Msg {
	s.m.refused(refusedConcurrency)
	return s.failure(req, mdns.RcodeServerFailure, true, mdns.ExtendedErrorCodeOther, msgOverloaded)
}

// forward answers req from the upstreams, the caller holding a slot. The
// reply packs within the client's UDP size (tcp false) or a TCP message.
func (s *Server) forward(req *mdns.Msg, tcp bool) *mdns.Msg {
	s.m.forwarded.Inc()
	q := req.Question[0]
	id := req.Id
	req.Id = 0
	query, err := req.Pack()
	req.Id = id
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*s.fwd.timeout)
		defer cancel()
		for _, up := range s.fwd.ups {
			uctx, ucancel := context.WithTimeout(ctx, s.fwd.timeout)
			r, err := up.exchange(uctx, query, q)
			if err == nil && r.Truncated && tcp {
				r, err = up.exchangeTCP(uctx, req, s.fwd.timeout)
			}
			ucancel()
			if err == nil {
				return s.fit(req, r, tcp)
			}
			s.cfg.Logger.Debug("upstream failed", "upstream", up.addr, "err", err)
			if ctx.Err() != nil {
				break
			}
		}
	}
	return s.failure(req, mdns.RcodeServerFailure, true, mdns.ExtendedErrorCodeNetworkError, msgUpstreamFailed)
}

// fit makes an upstream's answer r the reply to req: req's ID and
// question, our own OPT record (only if req had one), no TSIG of the
// upstream's, and truncated with TC set to the client's size over UDP (to
// a TCP message over TCP).
// An answer that still does not fit, or does not pack, becomes its header
// and question alone (TC set, or SERVFAIL).
func (s *Server) fit(req, r *mdns.Msg, tcp bool) *mdns.Msg {
	size := udpSize(req)
	limit := size
	if tcp {
		limit = mdns.MaxMsgSize
	}
	r.Id = req.Id
	r.Question = []mdns.Question{req.Question[0]}
	var opts []mdns.EDNS0
	extra := r.Extra[:0]
	for _, rr := range r.Extra {
		switch x := rr.(type) {
		case *mdns.OPT:
			opts = x.Option
		case *mdns.TSIG:
		default:
			extra = append(extra, rr)
		}
	}
	r.Extra = extra
	if opt := req.IsEdns0(); opt != nil {
		r.SetEdns0(uint16(size), opt.Do())
		r.IsEdns0().Option = opts
	}
	r.Truncate(limit) // compresses, and over TCP keeps within a TCP message
	b, err := r.Pack()
	if err == nil && len(b) <= limit {
		if r.Truncated && !tcp {
			s.m.truncatedForwarded.Inc()
		}
		return r
	}
	m := new(mdns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	if err != nil {
		m.Rcode = mdns.RcodeServerFailure
	} else {
		m.Rcode = r.Rcode & 0xf
		m.Truncated = true
		s.m.truncatedForwarded.Inc()
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(uint16(size), opt.Do())
	}
	return m
}

// failure is a reply to req with rcode and no records; to a client that
// sent EDNS0, with an extended error (RFC 8914) saying why.
func (s *Server) failure(req *mdns.Msg, rcode int, ra bool, info uint16, text string) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = ra
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(uint16(udpSize(req)), opt.Do())
		m.IsEdns0().Option = []mdns.EDNS0{&mdns.EDNS0_EDE{InfoCode: info, ExtraText: text}}
	}
	return m
}
