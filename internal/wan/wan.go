// Package wan emulates a wide-area link between sites on one machine: a
// real TCP proxy on loopback that adds one-way delay in user space (this
// kernel has no netem), counts the bytes it carries, and can be cut and
// healed to make a partition. Tests route peer traffic through it with a
// dialer; benchmarks use it for the delay between sites.
package wan

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards connections from its loopback address to a target,
// delaying each direction by Delay.
type Proxy struct {
	ln     net.Listener
	target string
	delay  time.Duration

	cut        atomic.Bool
	tap        atomic.Pointer[func([]byte)]
	up, down   atomic.Uint64 // bytes towards the target, and back
	mu         sync.Mutex
	conns      map[net.Conn]struct{}
	wg         sync.WaitGroup
	closed     chan struct{}
	closedOnce sync.Once
}

// NewProxy starts a proxy to target on a loopback port.
func NewProxy(target string, delay time.Duration) (*Proxy, error) {
	return NewProxyOn("127.0.0.1:0", target, delay)
}

// NewProxyOn starts a proxy to target listening on listen.
func NewProxyOn(listen, target string, delay time.Duration) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, delay: delay, conns: make(map[net.Conn]struct{}), closed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is where to connect instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetTap makes f see every chunk the proxy carries, both ways (tests
// check what crosses the link).
func (p *Proxy) SetTap(f func([]byte)) { p.tap.Store(&f) }

// Bytes returns the bytes carried towards the target and back.
func (p *Proxy) Bytes() (up, down uint64) { return p.up.Load(), p.down.Load() }

// Cut drops every connection and refuses new ones until Heal.
func (p *Proxy) Cut() {
	p.cut.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// Heal accepts connections again.
func (p *Proxy) Heal() { p.cut.Store(false) }

// Close stops the proxy and drops its connections.
func (p *Proxy) Close() error {
	p.closedOnce.Do(func() { close(p.closed) })
	err := p.ln.Close()
	p.Cut()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !add {
		delete(p.conns, c)
		return true
	}
	select {
	case <-p.closed:
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.cut.Load() {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

func (p *Proxy) serve(c net.Conn) {
	defer c.Close()
	t, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	defer t.Close()
	if !p.track(c, true) {
		return
	}
	defer p.track(c, false)
	if !p.track(t, true) {
		return
	}
	defer p.track(t, false)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(t, c, &p.up) }()
	go func() { defer wg.Done(); p.pipe(c, t, &p.down) }()
	wg.Wait()
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, holding each chunk for the delay. Reading and
// writing run apart, so the delay does not limit throughput.
func (p *Proxy) pipe(dst, src net.Conn, count *atomic.Uint64) {
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				q <- chunk{b[:n], time.Now().Add(p.delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for ch := range q {
		if d := time.Until(ch.due); d > 0 {
			time.Sleep(d)
		}
		count.Add(uint64(len(ch.b)))
		if f := p.tap.Load(); f != nil {
			(*f)(ch.b)
		}
		if _, err := dst.Write(ch.b); err != nil {
			src.Close()
			for range q { // let the reader finish
			}
			return
		}
	}
	// src ended: pass the half-close on.
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	} else {
		dst.Close()
	}
}

// WAN is the link between sites: one proxy per target address, created on
// first use, all sharing one delay and one switch.
type WAN struct {
	delay   time.Duration
	mu      sync.Mutex
	proxies map[string]*Proxy
	cut     bool
}

// New returns a WAN with the given one-way delay.
func New(delay time.Duration) *WAN { return &WAN{delay: delay, proxies: make(map[string]*Proxy)} }

// ErrCut is returned by Dial while the WAN is cut.
var ErrCut = errors.New("wan: link is cut")

// Dial connects to addr across the WAN; it has the signature of a gRPC
// context dialer.
func (w *WAN) Dial(ctx context.Context, addr string) (net.Conn, error) {
	w.mu.Lock()
	if w.cut {
		w.mu.Unlock()
		return nil, ErrCut
	}
	p, ok := w.proxies[addr]
	if !ok {
		var err error
		if p, err = NewProxy(addr, w.delay); err != nil {
			w.mu.Unlock()
			return nil, err
		}
		w.proxies[addr] = p
	}
	w.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", p.Addr())
}

// Cut partitions the WAN: every connection across it drops and new ones
// fail until Heal.
func (w *WAN) Cut() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cut = true
	for _, p := range w.proxies {
		p.Cut()
	}
}

// Heal ends a partition.
func (w *WAN) Heal() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cut = false
	for _, p := range w.proxies {
		p.Heal()
	}
}

// Bytes sums the bytes carried in each direction over all proxies.
func (w *WAN) Bytes() (up, down uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.proxies {
		u, d := p.Bytes()
		up, down = up+u, down+d
	}
	return up, down
}

// Close stops every proxy.
func (w *WAN) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	for _, p := range w.proxies {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}

var _ io.Closer = (*WAN)(nil)
