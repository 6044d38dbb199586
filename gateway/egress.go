package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/straitmesh/strait/internal/acceptloop"
	"github.com/straitmesh/strait/internal/tunnelmux"
)

// runEgress keeps one listener per egress listener of the configuration
// (on the imported services' virtual IPs) until ctx ends, at most
// MaxEgressListeners of them: the ones running stay, and free places go
// to the others in name order. What is not opened (over the limit, or
// failing to bind) is logged and counted once, not at every
// configuration; a listener that failed to bind is tried again at the
// next configuration.
func (g *Gateway) runEgress(ctx context.Context) {
	type run struct {
		addr string
		ln   net.Listener
		done chan struct{}
	}
	running := map[string]*run{}
	bindFailed := map[string]string{} // listener name → the address that failed
	overLimit := 0                    // listeners left closed by the limit, as last logged
	var wg sync.WaitGroup
	defer func() {
		for _, r := range running {
			r.ln.Close()
		}
		wg.Wait()
		g.m.egressListeners.WithLabelValues("open").Set(0)
	}()
	for {
		cfg, changed := g.config()
		if cfg != nil {
			for name, r := range running {
				if l, ok := cfg.egress[name]; !ok || l.addr != r.addr {
					r.ln.Close()
					delete(running, name)
				}
			}
			for name, addr := range bindFailed {
				if l, ok := cfg.egress[name]; !ok || l.addr != addr {
					delete(bindFailed, name)
				}
			}
			skipped := 0
			for _, name := range slices.Sorted(maps.Keys(cfg.egress)) {
				l := cfg.egress[name]
				if _, ok := running[name]; ok {
					continue
				}
				if len(running) >= g.cfg.MaxEgressListeners {
					skipped++
					continue
				}
				ln, err := listenTCP(l.addr)
				if err != nil {
					if bindFailed[name] != l.addr {
						bindFailed[name] = l.addr
						g.m.egressRefusals.WithLabelValues("bind").Inc()
						g.log.Error("egress listener cannot bind",
							"listener", name, "addr", l.addr, "err", err, "check", bindHint)
					}
					continue
				}
				if _, ok := bindFailed[name]; ok {
					delete(bindFailed, name)
					g.log.Info("egress listener bound after an earlier failure", "listener", name, "addr", l.addr)
				}
				r := &run{addr: l.addr, ln: ln, done: make(chan struct{})}
				running[name] = r
				wg.Add(1)
				go func() {
					defer wg.Done()
					g.serveEgress(ctx, ln, name)
				}()
			}
			if skipped != overLimit {
				if skipped > overLimit {
					g.m.egressRefusals.WithLabelValues("limit").Add(float64(skipped - overLimit))
				}
				if skipped > 0 {
					g.log.Error("egress listeners over the limit not opened",
						"configured", len(cfg.egress), "limit", g.cfg.MaxEgressListeners, "not_opened", skipped,
						"check", "raise --max-egress-listeners, or import fewer services")
				} else {
					g.log.Info("every egress listener is open again", "configured", len(cfg.egress), "limit", g.cfg.MaxEgressListeners)
				}
				overLimit = skipped
			}
			g.m.egressListeners.WithLabelValues("open").Set(float64(len(running)))
			g.m.egressListeners.WithLabelValues("over_limit").Set(float64(skipped))
			g.m.egressListeners.WithLabelValues("bind_failed").Set(float64(len(bindFailed)))
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// bindHint says what to check when an egress listener cannot bind.
const bindHint = "the virtual IP range must be local on this host (ip route add local <virtual_ip_cidr> dev lo), " +
	"each site on a host needs its own range, and no other process may hold the address"

// serveEgress accepts local clients on one egress listener until it is
// closed, retrying temporary accept errors (descriptors exhausted for a
// moment).
func (g *Gateway) serveEgress(ctx context.Context, ln net.Listener, name string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	al := acceptloop.Wrap(ln, acceptloop.Config{Name: "egress", Logger: g.log, Metrics: g.wan.accepts})
	for {
		c, err := al.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				g.log.Error("egress listener failed; it accepts no more connections", "listener", name, "addr", ln.Addr().String(), "err", err)
			}
			return
		}
		wg.Add(1)
		g.active.Add(1)
		go func() {
			defer wg.Done()
			defer g.active.Done()
			g.egressConn(ctx, c, name)
		}()
	}
}

// egressConn carries a local client's connection to one of the peer's
// gateways, trying another gateway when one cannot serve it.
func (g *Gateway) egressConn(ctx context.Context, client net.Conn, name string) {
	defer client.Close()
	if g.serving != nil {
		// Cut at the end of a drain: a client that keeps its half open
		// must not hold the gateway.
		defer context.AfterFunc(g.serving, func() { client.Close() })()
	}
	start := time.Now()
	cfg, _ := g.config()
	l, ok := cfg.egress[name]
	oc := cfg.out[l.cluster]
	if !ok || oc == nil {
		g.log.Warn("connection dropped: its listener is no longer configured", "listener", name, "client", client.RemoteAddr())
		return
	}
	service, peerTD := serviceOf(l.cluster), oc.peerTD
	up := newUpstream(ctx, client, oc.pool, oc.timeout, func(ctx context.Context, addr string, early []byte) (net.Conn, error) {
		return g.tunnels.open(ctx, addr, oc.peerTD, oc.timeout, oc.hdr, early)
	})
	up.answered = func() { g.m.connectTime.WithLabelValues("egress").Observe(time.Since(start).Seconds()) }
	err := up.start()
	var sent, recvd int64
	if err == nil {
		g.m.active.WithLabelValues("egress").Inc()
		sent, recvd = pipe(client, up)
		sent += int64(up.primed)
		g.m.active.WithLabelValues("egress").Dec()
		up.release()
		err = up.failure()
	}
	var perm *permanent
	switch {
	case errors.As(err, &perm):
		g.m.conns.WithLabelValues("egress", service, peerTD, "refused").Inc()
		g.log.Info("connection refused by the peer", "direction", "egress", "service", service, "peer", peerTD, "client", client.RemoteAddr(), "reason", perm.err)
		return
	case err != nil:
		g.m.conns.WithLabelValues("egress", service, peerTD, "unavailable").Inc()
		g.log.Warn("no gateway of the peer could serve a connection", "service", service, "peer", peerTD, "err", err)
		return
	}
	g.m.bytes.WithLabelValues("egress", service, peerTD).Add(float64(sent + recvd))
	if cut := up.cutBy(); cut != nil {
		g.m.conns.WithLabelValues("egress", service, peerTD, "reset").Inc()
		g.log.Info("connection cut by the peer", "direction", "egress", "service", service, "peer", peerTD, "client", client.RemoteAddr(),
			"gateway", up.gateway(), "cause", cut)
		return
	}
	g.m.conns.WithLabelValues("egress", service, peerTD, "ok").Inc()
	if g.cfg.AccessLog {
		g.log.LogAttrs(ctx, slog.LevelInfo, "connection", slog.String("direction", "egress"), slog.String("service", service),
			slog.String("peer", peerTD), slog.String("client", client.RemoteAddr().String()), slog.String("gateway", up.gateway()),
			slog.Int64("bytes_out", sent), slog.Int64("bytes_in", recvd), slog.Duration("duration", time.Since(start).Round(time.Millisecond)))
	}
}

// upstream is an egress connection's stream to the peer. The client's
// first bytes follow the stream's open at once, before the peer's gateway
// has answered, so no round trip across the WAN comes before the data.
// They are kept until the answer: when a gateway cannot serve the stream
// (no instance it could reach, or it failed), they are sent again through
// another, up to three gateways in all.
type upstream struct {
	ctx     context.Context
	client  net.Conn
	pool    *pool // the peer's gateways
	timeout time.Duration
	// open opens a stream to the gateway at addr, sending early with the
	// open.
	open func(ctx context.Context, addr string, early []byte) (net.Conn, error)
	// answered, if set, is called when a gateway has accepted the stream.
	answered func()
	tried    map[*endpoint]bool

	mu       sync.Mutex
	cond     sync.Cond
	st       net.Conn
	r        *bufio.Reader // st's, for the answer
	e        *endpoint
	early    []byte // client bytes sent before the answer
	primed   int    // of which start read from the client itself
	accepted bool
	finished bool  // the client closed its side
	err      error // the connection failed for good
	cut      error // the peer reset the stream after accepting it
}

func newUpstream(ctx context.Context, client net.Conn, p *pool, timeout time.Duration, open func(context.Context, string, []byte) (net.Conn, error)) *upstream {
	u := &upstream{ctx: ctx, client: client, pool: p, timeout: timeout, open: open, tried: map[*endpoint]bool{}}
	u.cond.L = &u.mu
	return u
}

// start opens the stream on a first gateway, with the bytes the client
// has already sent, if any.
func (u *upstream) start() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.early = readReady(u.client)
	u.primed = len(u.early)
	return u.next()
}

// readReady returns the bytes c has received and nobody has read, without
// waiting for any: a client that spoke as soon as it connected (most
// protocols) has its first bytes travel with the stream's open.
func readReady(c net.Conn) []byte {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	buf := smallBuffers.Get().(*[]byte)
	defer smallBuffers.Put(buf)
	n := 0
	raw.Read(func(fd uintptr) bool {
		n, _ = syscall.Read(int(fd), *buf)
		return true // one try: not ready is an answer too
	})
	if n <= 0 {
		return nil
	}
	return bytes.Clone((*buf)[:n])
}

// maxEarly bounds the client bytes sent ahead of the answer; beyond it,
// the client's side waits for the answer.
const maxEarly = 64 << 10

// next opens the stream on a gateway not tried yet and sends it what the
// client has sent so far. Called with mu held.
func (u *upstream) next() error {
	if len(u.tried) >= 3 {
		return errors.New("three gateways tried")
	}
	st, e, err := dialPool(u.ctx, u.pool, u.timeout, u.tried, func(ctx context.Context, addr string) (net.Conn, error) {
		return u.open(ctx, addr, u.early)
	})
	if err != nil {
		return err
	}
	st.SetReadDeadline(time.Now().Add(u.timeout)) // for the answer
	if u.finished {
		closeWrite(st)
	}
	u.st, u.e, u.r = st, e, bufio.NewReaderSize(st, 64)
	return nil
}

// Write sends client bytes to the peer.
func (u *upstream) Write(p []byte) (int, error) {
	u.mu.Lock()
	for !u.accepted && u.err == nil && len(u.early) > 0 && len(u.early)+len(p) > maxEarly {
		u.cond.Wait()
	}
	if u.err != nil {
		u.mu.Unlock()
		return 0, u.err
	}
	if !u.accepted {
		u.early = append(u.early, p...)
	}
	st, answered := u.st, u.accepted
	u.mu.Unlock()
	if _, err := st.Write(p); err != nil && answered {
		return 0, err
	}
	// Before the answer, a failed write is for Read to handle: the bytes
	// are kept, and go to the next gateway.
	return len(p), nil
}

// CloseWrite passes the client's half-close on.
func (u *upstream) CloseWrite() error {
	u.mu.Lock()
	u.finished = true
	st := u.st
	u.mu.Unlock()
	closeWrite(st)
	return nil
}

// Read reads the peer's bytes for the client, after its answer.
func (u *upstream) Read(p []byte) (int, error) {
	u.mu.Lock()
	answered, err := u.accepted, u.err
	u.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if !answered {
		if err := u.answer(); err != nil {
			return 0, err
		}
	}
	n, err := u.r.Read(p)
	if err != nil && errors.Is(err, tunnelmux.ErrReset) {
		u.mu.Lock()
		u.cut = err
		u.mu.Unlock()
	}
	return n, err
}

// cutBy is why the peer reset the stream after accepting it, or nil.
func (u *upstream) cutBy() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.cut
}

// answer waits for a gateway to accept the stream, moving it to another
// gateway while one cannot serve it.
func (u *upstream) answer() error {
	for {
		u.mu.Lock()
		st, r, e := u.st, u.r, u.e
		u.mu.Unlock()
		err := readStatus(r)
		if err == nil {
			st.SetReadDeadline(time.Time{})
			if u.answered != nil {
				u.answered()
			}
			u.mu.Lock()
			u.accepted, u.early = true, nil
			u.cond.Broadcast()
			u.mu.Unlock()
			return nil
		}
		var ref *errRefused
		if errors.As(err, &ref) {
			return u.fail(&permanent{err})
		}
		// Unavailable there, or the stream broke: another gateway.
		u.mu.Lock()
		st.Close()
		u.pool.connected(e, false)
		u.pool.done(e)
		u.e = nil
		err = errors.Join(fmt.Errorf("%s: %w", e.addr, err), u.next())
		u.mu.Unlock()
		if u.e == nil {
			return u.fail(err)
		}
	}
}

// fail ends the connection with err: both of the client's directions stop.
func (u *upstream) fail(err error) error {
	u.mu.Lock()
	u.err = err
	u.cond.Broadcast()
	u.mu.Unlock()
	u.client.Close()
	return err
}

// failure is why the connection failed, or nil.
func (u *upstream) failure() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.err
}

// gateway is the address of the gateway that served the connection.
func (u *upstream) gateway() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.e == nil {
		return ""
	}
	return u.e.addr
}

// release closes the stream and returns its endpoint to the pool.
func (u *upstream) release() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.st != nil {
		u.st.Close()
	}
	if u.e != nil {
		u.pool.done(u.e)
		u.e = nil
	}
}

// permanent marks a refusal that another gateway would repeat.
type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }
func (p *permanent) Unwrap() error { return p.err }

// serviceOf is "ns/svc" from a cluster name out/<peer>/<ns>/<svc>/<port>.
func serviceOf(cluster string) string {
	parts := strings.Split(cluster, "/")
	if len(parts) == 5 {
		return parts[2] + "/" + parts[3]
	}
	return cluster
}
