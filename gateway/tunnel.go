package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/internal/acceptloop"
	"github.com/straitmesh/strait/internal/passthrough"
	"github.com/straitmesh/strait/internal/tunnelmux"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/policy"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/mtls"
)

// tunnels pools multiplexed sessions to peer gateways: TunnelsPerPeer
// per address, each new stream on the next in turn.
type tunnels struct {
	g     *Gateway
	next  atomic.Uint32
	mu    sync.Mutex
	slots map[slotKey]*slot
	// sessions accepted from peers, closed at shutdown.
	accepted map[*tunnelmux.Session]struct{}
	closed   bool
	// peerStreams counts the streams being served by peer trust domain,
	// over all its tunnels (Config.MaxStreamsPerPeer).
	peerStreams map[string]int
}

type slotKey struct {
	addr string
	i    uint32
}

type slot struct {
	mu   sync.Mutex
	sess *tunnelmux.Session
	// cur is sess, for readers that must not wait on mu (held while a
	// tunnel is dialled): tunnelReport.
	cur atomic.Pointer[tunnelmux.Session]
}

// tunnelReport counts the peers' gateways the configuration names, and
// those with a tunnel up (tunnels open on a connection's first need, so a
// peer nobody has called yet has none).
func (g *Gateway) tunnelReport() (peers, up uint32) {
	addrs := map[string]bool{}
	if cfg, _ := g.config(); cfg != nil {
		for _, oc := range cfg.out {
			oc.pool.mu.Lock()
			for a := range oc.pool.eps {
				addrs[a] = true
			}
			oc.pool.mu.Unlock()
		}
	}
	live := map[string]bool{}
	if t := g.tunnels; t != nil {
		t.mu.Lock()
		for k, s := range t.slots {
			if sess := s.cur.Load(); sess != nil && !sess.IsClosed() {
				live[k.addr] = true
			}
		}
		t.mu.Unlock()
	}
	for a := range addrs {
		if live[a] {
			up++
		}
	}
	return uint32(len(addrs)), up
}

func newTunnels(g *Gateway) *tunnels {
	return &tunnels{g: g, slots: make(map[slotKey]*slot), accepted: make(map[*tunnelmux.Session]struct{}), peerStreams: map[string]int{}}
}

// admit takes one of peer's places for a stream to serve; false when
// they are all taken.
func (t *tunnels) admit(peer string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.peerStreams[peer] >= t.g.cfg.MaxStreamsPerPeer {
		return false
	}
	t.peerStreams[peer]++
	return true
}

// release gives back a place admit took.
func (t *tunnels) release(peer string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.peerStreams[peer]--; t.peerStreams[peer] <= 0 {
		delete(t.peerStreams, peer)
	}
}

// open returns a new stream, opened with hdr and sending early (which
// leaves with the open), to the gateway at addr, which must present a
// gateway SVID of peerTD; each of the address's sessions is dialed on
// first use and reused.
func (t *tunnels) open(ctx context.Context, addr, peerTD string, timeout time.Duration, hdr, early []byte) (net.Conn, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, errors.New("gateway is shutting down")
	}
	key := slotKey{addr, t.next.Add(1) % uint32(t.g.cfg.TunnelsPerPeer)}
	s := t.slots[key]
	if s == nil {
		s = &slot{}
		t.slots[key] = s
	}
	t.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sess == nil || s.sess.IsClosed() {
		sess, err := t.dial(ctx, addr, peerTD, timeout)
		if err != nil {
			return nil, err
		}
		s.sess = sess
		s.cur.Store(sess)
	}
	st, err := s.sess.Open(hdr, early)
	if err != nil {
		// A draining peer said go away: its streams in flight finish on
		// the session, new ones go elsewhere. Anything else: the session
		// is broken.
		if !errors.Is(err, tunnelmux.ErrGoAway) {
			s.sess.Close()
		}
		s.sess = nil
		s.cur.Store(nil)
		return nil, err
	}
	return st, nil
}

func (t *tunnels) dial(ctx context.Context, addr, peerTD string, timeout time.Duration) (*tunnelmux.Session, error) {
	start := time.Now()
	td, err := spiffeid.TrustDomainFromString(peerTD)
	if err != nil {
		return nil, err
	}
	authorize := func(id spiffeid.ID) error {
		if _, ok := trust.GatewayName(id, td); !ok {
			return fmt.Errorf("%s is not a gateway of %s", id, td)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, mtls.ClientConfig(t.g.ident, authorize, meshname.TunnelALPN))
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		t.g.m.handshakes.WithLabelValues("client", "error").Inc()
		return nil, fmt.Errorf("tls with %s: %w", addr, err)
	}
	if conn.ConnectionState().NegotiatedProtocol != meshname.TunnelALPN {
		conn.Close()
		return nil, fmt.Errorf("%s does not speak %s", addr, meshname.TunnelALPN)
	}
	t.g.m.handshakes.WithLabelValues("client", "ok").Inc()
	t.g.m.handshakeTime.Observe(time.Since(start).Seconds())
	return tunnelmux.Client(conn, t.g.tunnelConfig(peerTD)), nil
}

func (t *tunnels) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for _, s := range t.slots {
		s.mu.Lock()
		if s.sess != nil {
			s.sess.Close()
		}
		s.mu.Unlock()
	}
	for s := range t.accepted {
		s.Close()
	}
}

// goAway tells peers with sessions to this gateway to open no new streams
// on them (they go to another gateway); streams in flight continue.
func (t *tunnels) goAway() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for s := range t.accepted {
		s.GoAway()
	}
}

func (t *tunnels) track(s *tunnelmux.Session, add bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if add {
		if t.closed {
			return false
		}
		t.accepted[s] = struct{}{}
	} else {
		delete(t.accepted, s)
	}
	return true
}

// serveIngress accepts peers' tunnels and their servers' control
// connections on the WAN listener, within the WAN connection limits,
// until the listener is closed. Temporary accept errors are retried; it
// returns an error only when the listener fails for good.
func (g *Gateway) serveIngress(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	al := acceptloop.Wrap(ln, acceptloop.Config{Name: "wan", Logger: g.log, Metrics: g.wan.accepts})
	for {
		c, err := al.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || g.draining.Load() {
				return nil
			}
			return err
		}
		slot, refused := g.wan.limits.AdmitFrom(acceptloop.SourceIP(c))
		if refused != "" {
			g.refuseWAN(c, refused)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.ingressConn(ctx, slot.Conn(c))
		}()
	}
}

// bufferedConn reads through a bufio.Reader that has peeked at the start.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// ingressConn looks at the TLS ClientHello of a connection from the WAN:
// addressed to this site's servers (SNI servers.<td>, no tunnel ALPN), it
// is passed through undecrypted, the servers authenticating the caller
// end to end, if it offers gRPC (h2) and nothing else (never Raft);
// anything else must be a peer gateway's tunnel. HandshakeTimeout bounds
// the ClientHello and the tunnel's TLS handshake together.
func (g *Gateway) ingressConn(ctx context.Context, raw net.Conn) {
	br := bufio.NewReaderSize(raw, 16<<10+5)
	deadline := time.Now().Add(g.cfg.HandshakeTimeout)
	raw.SetReadDeadline(deadline)
	sni, alpn, err := peekClientHello(br)
	raw.SetReadDeadline(time.Time{})
	if err == nil && sni == meshname.ServersSNI(g.td.Name()) && !slices.Contains(alpn, meshname.TunnelALPN) {
		if len(alpn) == 0 || slices.ContainsFunc(alpn, func(p string) bool { return p != "h2" }) {
			g.refuseWAN(raw, "passthrough_alpn")
			return
		}
		g.passToServers(ctx, bufferedConn{raw, br})
		return
	}
	g.tunnelConn(ctx, bufferedConn{raw, br}, deadline)
}

// passToServers relays a connection to one of this site's servers,
// after the passthrough preamble (internal/passthrough) that tells the
// server it came from the WAN, and from where: the server then serves it
// the federation methods only. Every connection gets it; a client cannot
// leave it out. The relay ends when no byte has crossed it either way for
// PassthroughIdleTimeout.
//
// These connections are long-lived (replication streams) and are not
// drained: they are cut at shutdown, and the peer's servers reconnect
// through another gateway.
func (g *Gateway) passToServers(ctx context.Context, c net.Conn) {
	defer c.Close()
	client, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		g.log.Warn("control connection dropped: no client address", "remote", c.RemoteAddr(), "err", err)
		return
	}
	preamble := passthrough.Append(nil, client)
	var d net.Dialer
	for _, i := range rand.Perm(len(g.cfg.Servers)) {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		up, err := d.DialContext(dctx, "tcp", g.cfg.Servers[i])
		cancel()
		if err != nil {
			continue
		}
		defer up.Close()
		up.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := up.Write(preamble); err != nil {
			continue
		}
		up.SetWriteDeadline(time.Time{})
		stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
		defer stop()
		g.m.conns.WithLabelValues("control", "servers", "", "ok").Inc()
		ic, iu, idle := newIdlePair(c, up, g.cfg.PassthroughIdleTimeout)
		pipe(ic, iu)
		if idle.Load() {
			g.wan.idleClosed.Inc()
			g.log.Debug("control connection closed: idle", "remote", c.RemoteAddr(), "idle_timeout", g.cfg.PassthroughIdleTimeout)
		}
		return
	}
	g.m.conns.WithLabelValues("control", "servers", "", "unavailable").Inc()
	g.log.Warn("no server of this site reachable for a peer's control connection", "remote", c.RemoteAddr())
}

// tunnelConn authenticates a peer's gateway and serves its streams.
func (g *Gateway) tunnelConn(ctx context.Context, raw net.Conn, deadline time.Time) {
	authorize := func(id spiffeid.ID) error {
		if id.TrustDomain() == g.td {
			return errors.New("a gateway of this site is not a peer")
		}
		if _, ok := trust.GatewayName(id, id.TrustDomain()); !ok {
			return fmt.Errorf("%s is not a gateway", id)
		}
		return nil // its certificate verified against its own trust domain's bundle
	}
	conn := tls.Server(raw, mtls.ServerConfig(g.ident, mtls.RequireClientSVID, authorize, meshname.TunnelALPN))
	hctx, cancel := context.WithDeadline(ctx, deadline)
	err := conn.HandshakeContext(hctx)
	cancel()
	if err != nil || conn.ConnectionState().NegotiatedProtocol != meshname.TunnelALPN {
		g.m.handshakes.WithLabelValues("server", "error").Inc()
		g.log.Debug("tunnel refused", "remote", raw.RemoteAddr(), "err", err)
		raw.Close()
		return
	}
	g.m.handshakes.WithLabelValues("server", "ok").Inc()
	peer, _ := mtls.PeerID(conn.ConnectionState())
	peerTD := peer.TrustDomain().Name()
	tcfg := g.tunnelConfig(peerTD)
	sess := tunnelmux.Server(conn, tcfg)
	var logged sync.Map // refusals logged on this tunnel beyond tcfg's own
	if !g.tunnels.track(sess, true) {
		sess.Close()
		return
	}
	defer g.tunnels.track(sess, false)
	defer sess.Close()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := sess.Accept()
		if err != nil {
			return
		}
		if !g.tunnels.admit(peerTD) {
			g.tunnelRefused(peerTD, causeStreamsPerPeer, &logged)
			st.Reset(fmt.Sprintf("too many streams from %s (at most %d)", peerTD, g.cfg.MaxStreamsPerPeer))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer g.tunnels.release(peerTD)
			g.ingressStream(ctx, st, peer)
		}()
	}
}

// causeStreamsPerPeer is the refusal cause of Config.MaxStreamsPerPeer.
const causeStreamsPerPeer = "streams_per_peer"

// unknownService is the service label of streams whose SNI names no
// exported service: the SNI is the peer's to choose, so it never becomes
// a label value (one series per peer, however many names it tries).
const unknownService = "unknown"

// ingressStream authorizes one stream and connects it to an instance.
// Every refusal and failure is logged at info with its cause (the access
// log of connections served is Config.AccessLog).
func (g *Gateway) ingressStream(ctx context.Context, st *tunnelmux.Stream, peer spiffeid.ID) {
	defer st.Close()
	g.active.Add(1)
	defer g.active.Done()
	start := time.Now()
	peerTD := peer.TrustDomain().Name()
	st.SetDeadline(start.Add(g.cfg.HandshakeTimeout))
	h, err := parseHeader(st.Header())
	if err != nil {
		g.m.conns.WithLabelValues("ingress", unknownService, peerTD, "bad_request").Inc()
		g.log.Info("connection refused", "direction", "ingress", "peer", peerTD, "gateway", peer.String(), "cause", "bad tunnel header", "err", err)
		writeStatus(st, statusBadRequest, "bad tunnel header")
		return
	}
	port, svc, ns, td, ok := meshname.ParseSNI(h.SNI)
	cfg, _ := g.config()
	ch, found := chain{}, false
	if cfg != nil && ok && td == g.td.Name() {
		ch, found = cfg.ingress[h.SNI]
	}
	if !found {
		g.m.conns.WithLabelValues("ingress", unknownService, peerTD, "unknown").Inc()
		msg := fmt.Sprintf("%s is not exported to %s", h.SNI, peerTD)
		if held, ok := g.refusals.allow(peerTD+"|unknown", time.Now()); ok {
			g.log.Info("connection refused", "direction", "ingress", "peer", peerTD, "gateway", peer.String(), "cause", msg, "held_back", held)
		}
		writeStatus(st, statusUnknown, msg)
		return
	}
	service := ns + "/" + svc
	if _, ok := ch.peers[peerTD]; ch.meta && !ok {
		// Exported to other peers only: the peer is told what it is told
		// of a service that does not exist; the log says which it is.
		g.m.denials.WithLabelValues(service, peerTD).Inc()
		g.m.conns.WithLabelValues("ingress", service, peerTD, "denied").Inc()
		if held, ok := g.refusals.allow(peerTD+"|"+service+"|not-exported-to", time.Now()); ok {
			g.log.Info("connection denied", "direction", "ingress", "service", service, "port", port, "peer", peerTD, "gateway", peer.String(),
				"cause", fmt.Sprintf("%s is exported, but not to %s", service, peerTD), "held_back", held)
		}
		writeStatus(st, statusUnknown, fmt.Sprintf("%s is not exported to %s", h.SNI, peerTD))
		return
	}
	// Who is calling: the calling gateway, for its whole site. A source
	// service named in the stream header is the peer gateway's own claim,
	// which nothing here can check, so it decides nothing: intentions
	// naming a source service are decided fail-closed (see policy).
	principal := peer.String()
	src := policy.Source{Site: ch.peers[peerTD]}
	if reason, ok := g.authorize(ch, principal, src, ns, svc); !ok {
		g.m.denials.WithLabelValues(service, peerTD).Inc()
		g.m.conns.WithLabelValues("ingress", service, peerTD, "denied").Inc()
		kind := "no-intention"
		if strings.HasPrefix(reason, "denied by intention") {
			kind = "deny-intention"
		}
		if held, ok := g.refusals.allow(peerTD+"|"+service+"|"+kind, time.Now()); ok {
			g.log.Info("connection denied", "direction", "ingress", "service", service, "port", port, "peer", peerTD, "source", principal, "cause", reason, "held_back", held)
		}
		writeStatus(st, statusDenied, reason)
		return
	}
	in := cfg.in[ch.cluster]
	up, e, err := dialPool(ctx, in.pool, in.timeout, nil, func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
	if err != nil {
		g.m.conns.WithLabelValues("ingress", service, peerTD, "unavailable").Inc()
		msg := fmt.Sprintf("no instance of %s could be reached: %v", service, err)
		if held, ok := g.refusals.allow(peerTD+"|"+service+"|unavailable", time.Now()); ok {
			g.log.Info("connection failed", "direction", "ingress", "service", service, "port", port, "peer", peerTD, "source", principal, "cause", msg, "held_back", held)
		}
		writeStatus(st, statusUnavailable, msg)
		return
	}
	defer in.pool.done(e)
	defer up.Close()
	g.m.connectTime.WithLabelValues("ingress").Observe(time.Since(start).Seconds())
	// The OK waits for the instance's first bytes (or a millisecond) to
	// leave with them: most instances answer at once, and then the
	// answer costs no tunnel write of its own.
	if _, err := st.WriteDeferred(statusOKBytes); err != nil {
		g.m.conns.WithLabelValues("ingress", service, peerTD, "unavailable").Inc()
		g.log.Info("connection failed", "direction", "ingress", "service", service, "port", port, "peer", peerTD, "source", principal, "cause", "the peer's stream ended before the answer", "err", err)
		return
	}
	st.SetDeadline(time.Time{})
	g.m.active.WithLabelValues("ingress").Inc()
	sent, recvd := pipe(st, up)
	g.m.active.WithLabelValues("ingress").Dec()
	g.m.bytes.WithLabelValues("ingress", service, peerTD).Add(float64(sent + recvd))
	g.m.conns.WithLabelValues("ingress", service, peerTD, "ok").Inc()
	if g.cfg.AccessLog {
		g.log.LogAttrs(ctx, slog.LevelInfo, "connection", slog.String("direction", "ingress"), slog.String("service", service),
			slog.String("port", port), slog.String("peer", peerTD), slog.String("source", principal), slog.String("upstream", e.addr),
			slog.Int64("bytes_in", sent), slog.Int64("bytes_out", recvd), slog.Duration("duration", time.Since(start).Round(time.Millisecond)))
	}
}

// authorize decides whether principal (src as the intentions name it)
// may reach ns/svc through ch, and says why. The chain's RBAC rule (what
// Envoy enforces) must allow it; when the chain carries its metadata,
// policy.Decide (the evaluator behind `strait intention check`) must
// allow it too, naming the intention that decided.
func (g *Gateway) authorize(ch chain, principal string, src policy.Source, ns, svc string) (string, bool) {
	service := ns + "/" + svc
	rbac := policy.EvalRBAC(ch.rules, principal)
	if !ch.meta {
		if !rbac {
			return fmt.Sprintf("no intention allows %s to reach %s", principal, service), false
		}
		return "", true
	}
	ok, matched := policy.Decide(ch.intentions, src, ns, svc)
	reason := policy.Reason(ok, matched, principal, service)
	if ok && !rbac {
		// The two never disagree for rules the servers compile; refuse
		// (fail closed) and say so.
		return fmt.Sprintf("%s, but the ingress RBAC rule does not admit %s", reason, principal), false
	}
	return reason, ok
}

// dialPool connects to the least-loaded endpoint of p not in tried (nil:
// none tried yet), which it adds to, until three have been tried in all;
// the endpoint stays reserved until p.done.
func dialPool(ctx context.Context, p *pool, timeout time.Duration, tried map[*endpoint]bool, dial func(context.Context, string) (net.Conn, error)) (net.Conn, *endpoint, error) {
	if tried == nil {
		tried = map[*endpoint]bool{}
	}
	var errs []error
	for len(tried) < 3 {
		e := p.pick(tried)
		if e == nil {
			break
		}
		tried[e] = true
		dctx, cancel := context.WithTimeout(ctx, timeout)
		c, err := dial(dctx, e.addr)
		cancel()
		p.connected(e, err == nil)
		if err == nil {
			return c, e, nil
		}
		p.done(e)
		errs = append(errs, fmt.Errorf("%s: %w", e.addr, err))
	}
	if len(errs) == 0 {
		return nil, nil, errors.New("no endpoint available (none passing, or at the connection limit)")
	}
	return nil, nil, errors.Join(errs...)
}

// Copy buffers are pooled (a new connection would otherwise allocate and
// clear them) in two sizes: every copy starts small, and one that keeps
// filling its buffer (a bulk transfer) moves to a large one, so that
// interactive connections hold 32 KiB a direction and only bulk flows
// 256 KiB (fewer reads, writes and tunnel frames per byte), at most
// maxLarge of them at once.
const (
	smallCopy = 32 << 10
	largeCopy = 256 << 10
	// fullReads before a copy moves to the large buffer.
	fullReads = 4
	// maxLarge bounds the copies holding a large buffer at once (128 MiB
	// in all); the others stay small, whatever the load.
	maxLarge = 512
)

var largeSlots = make(chan struct{}, maxLarge)

var (
	smallBuffers = sync.Pool{New: func() any { b := make([]byte, smallCopy); return &b }}
	largeBuffers = sync.Pool{New: func() any { b := make([]byte, largeCopy); return &b }}
)

// copyPooled copies src to dst until EOF or an error, like io.Copy, and
// returns the bytes written.
func copyPooled(dst io.Writer, src io.Reader) int64 {
	pool := &smallBuffers
	buf := pool.Get().(*[]byte)
	defer func() {
		pool.Put(buf)
		if pool == &largeBuffers {
			<-largeSlots
		}
	}()
	var written int64
	full := 0
	for {
		n, rerr := src.Read(*buf)
		if n > 0 {
			w, werr := dst.Write((*buf)[:n])
			written += int64(w)
			if werr != nil || w != n {
				return written
			}
			if n == len(*buf) && pool == &smallBuffers {
				if full++; full >= fullReads {
					select {
					case largeSlots <- struct{}{}:
						smallBuffers.Put(buf)
						pool = &largeBuffers
						buf = pool.Get().(*[]byte)
					default: // enough large buffers out already
					}
				}
			}
		}
		if rerr != nil {
			return written
		}
	}
}

// pipe copies both ways until both directions end, passing half-closes
// on, and returns the bytes copied a->b and b->a.
func pipe(a, b io.ReadWriter) (ab, ba int64) {
	done := make(chan int64, 1)
	go func() {
		n := copyPooled(b, a)
		closeWrite(b)
		done <- n
	}()
	ba = copyPooled(a, b)
	closeWrite(a)
	ab = <-done
	return ab, ba
}

// closeWrite half-closes c where it can (TCP, a tunnel stream), and
// closes it where it cannot.
func closeWrite(c io.Writer) {
	switch x := c.(type) {
	case interface{ CloseWrite() error }:
		x.CloseWrite()
	case bufferedConn:
		closeWrite(x.Conn)
	case io.Closer:
		x.Close()
	}
}
