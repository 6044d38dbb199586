// Package acceptloop keeps a process's accept loops alive and bounded: the
// server port, the gateway's WAN and egress listeners, the bundle endpoint
// and /metrics all accept through it.
//
//   - Listener retries the accept errors that pass (file descriptors or
//     kernel memory exhausted for a moment, a connection that failed before
//     it was accepted, a timeout) with backoff, 5 ms doubling to 1 s as
//     net/http does, logging at most once every 10 s and counting each
//     retry. Only a listener that is closed or broken for good ends its
//     loop: a client that uses up the process's descriptors can slow it
//     down but not stop it.
//   - Limiter admits connections up to a total and a number per source
//     address; a Slot holds one connection's place until it is released.
//
// Both are safe for concurrent use. Any package that accepts connections
// may import it; it imports nothing of Strait.
package acceptloop

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Backoff bounds: the first retry waits MinDelay, each further one twice
// the last, at most MaxDelay; a successful accept starts again from
// MinDelay.
const (
	MinDelay = 5 * time.Millisecond
	MaxDelay = time.Second
)

// logEvery is how often a listener that keeps retrying logs.
const logEvery = 10 * time.Second

// Metrics counts accept errors retried, and connections refused by a
// Listener's Limits; one per registry, shared by the listeners of a
// process.
type Metrics struct {
	retries, refused *prometheus.CounterVec
}

// NewMetrics registers strait_accept_retries_total and
// strait_accept_refused_total with reg (none when nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strait_accept_retries_total",
			Help: "Accept errors retried after a backoff, by listener and cause (fds: EMFILE or ENFILE; memory: ENOBUFS or ENOMEM; aborted: the connection failed before it was accepted; timeout).",
		}, []string{"listener", "cause"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strait_accept_refused_total",
			Help: "Connections closed at accept because a listener's limit was reached, by listener and cause (max_connections, max_connections_per_source).",
		}, []string{"listener", "cause"}),
	}
	if reg != nil {
		reg.MustRegister(m.retries, m.refused)
	}
	return m
}

// Config configures a Listener.
type Config struct {
	// Name names the listener in logs and metrics ("api", "wan",
	// "egress", "bundle", "metrics"): a fixed word, not an address.
	Name string
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Metrics counts retries and refusals; not counted when nil.
	Metrics *Metrics
	// Limits, when set, admits each accepted connection by its source
	// address: one over a limit is closed at once, counted and (at most
	// every 10s) logged, and Accept waits for the next. Admitted
	// connections release their place when closed.
	Limits *Limiter
}

// Listener is a net.Listener whose Accept retries temporary errors.
type Listener struct {
	net.Listener
	cfg    Config
	closed chan struct{}
	once   sync.Once
	// Logging state (retried): when the last warning was logged, and the
	// retries since.
	mu       sync.Mutex
	lastLog  time.Time
	unlogged int
	// refusedLog is when a refusal was last logged.
	refusedLog time.Time
}

var _ net.Listener = (*Listener)(nil)

// Wrap returns ln retrying temporary accept errors.
func Wrap(ln net.Listener, cfg Config) *Listener {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Listener{Listener: ln, cfg: cfg, closed: make(chan struct{})}
}

// Accept waits for the next connection. It returns an error only when the
// listener is closed (net.ErrClosed) or fails with an error that is not
// temporary.
func (l *Listener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			if l.cfg.Limits == nil {
				return c, nil
			}
			slot, refused := l.cfg.Limits.AdmitFrom(SourceIP(c))
			if refused == "" {
				return slot.Conn(c), nil
			}
			// Counted before the close, so that a client that sees
			// its connection closed also finds it in the metrics.
			l.refused(refused, c)
			c.Close()
			continue
		}
		select {
		case <-l.closed:
			return nil, net.ErrClosed
		default:
		}
		cause, ok := Temporary(err)
		if !ok {
			return nil, err
		}
		delay = min(max(2*delay, MinDelay), MaxDelay)
		l.retried(cause, err, delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-l.closed:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
}

// retried counts a retry and logs, at most once every logEvery.
func (l *Listener) retried(cause string, err error, delay time.Duration) {
	if l.cfg.Metrics != nil {
		l.cfg.Metrics.retries.WithLabelValues(l.cfg.Name, cause).Inc()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unlogged++
	now := time.Now()
	if !l.lastLog.IsZero() && now.Sub(l.lastLog) < logEvery {
		return
	}
	l.cfg.Logger.Warn("accept failed; retrying", "listener", l.cfg.Name, "cause", cause, "err", err,
		"retries_since_last_log", l.unlogged, "next_delay", delay)
	l.lastLog, l.unlogged = now, 0
}

// refused counts a connection over the limits, and logs at most every
// logEvery.
func (l *Listener) refused(cause string, c net.Conn) {
	if l.cfg.Metrics != nil {
		l.cfg.Metrics.refused.WithLabelValues(l.cfg.Name, cause).Inc()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); l.refusedLog.IsZero() || now.Sub(l.refusedLog) >= logEvery {
		l.cfg.Logger.Warn("connection refused: limit reached", "listener", l.cfg.Name, "cause", cause,
			"remote", c.RemoteAddr().String(), "open", l.cfg.Limits.Open())
		l.refusedLog = now
	}
}

// Close closes the listener and interrupts a backoff in progress.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Temporary says whether an accept error passes by itself, and names its
// cause for metrics.
func Temporary(err error) (cause string, ok bool) {
	if err == nil || errors.Is(err, net.ErrClosed) {
		return "", false
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EMFILE, syscall.ENFILE:
			return "fds", true
		case syscall.ENOBUFS, syscall.ENOMEM:
			return "memory", true
		case syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN,
			// Linux passes a new connection's pending network errors on
			// from accept(2); its manual says to retry them.
			syscall.EPROTO, syscall.ENOPROTOOPT, syscall.EHOSTDOWN, syscall.EHOSTUNREACH,
			syscall.ENETDOWN, syscall.ENETUNREACH, syscall.EOPNOTSUPP:
			return "aborted", true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout", true
	}
	return "", false
}

// Limiter admits connections up to a total and a number per source
// address.
type Limiter struct {
	maxTotal, maxPerSource int
	mu                     sync.Mutex
	total                  int
	bySource               map[string]int
}

// NewLimiter returns a Limiter of maxTotal connections, maxPerSource of
// them from one source address; zero means no limit.
func NewLimiter(maxTotal, maxPerSource int) *Limiter {
	return &Limiter{maxTotal: maxTotal, maxPerSource: maxPerSource, bySource: map[string]int{}}
}

// Open is the number of connections admitted and not yet released.
func (l *Limiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Refusal causes, as metric labels.
const (
	RefusedTotal     = "max_connections"
	RefusedPerSource = "max_connections_per_source"
)

// Admit takes a place for one more connection, counted against the total
// only; Slot.Source counts it against its source later (a gateway's
// passthrough names the real source only after the first bytes). ok is
// false when the total is reached.
func (l *Limiter) Admit() (s *Slot, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxTotal > 0 && l.total >= l.maxTotal {
		return nil, false
	}
	l.total++
	return &Slot{l: l}, true
}

// AdmitFrom takes a place for a connection from src (an IP address),
// against the total and src's share; refused names the limit reached.
func (l *Limiter) AdmitFrom(src string) (s *Slot, refused string) {
	s, ok := l.Admit()
	if !ok {
		return nil, RefusedTotal
	}
	if !s.Source(src) {
		s.Release()
		return nil, RefusedPerSource
	}
	return s, ""
}

// Slot is one admitted connection's place in a Limiter.
type Slot struct {
	l        *Limiter
	src      string
	counted  bool
	released atomic.Bool
}

// Source counts the slot against src's share (once); false when src has
// its share already (the slot stays held: release it).
func (s *Slot) Source(src string) bool {
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.counted {
		return true
	}
	if l.maxPerSource > 0 && l.bySource[src] >= l.maxPerSource {
		return false
	}
	l.bySource[src]++
	s.src, s.counted = src, true
	return true
}

// Rebind moves the slot's count from the source it was admitted for to
// src (a connection relayed by a gateway is counted against the client the
// gateway saw, once its preamble says who that is); false, with the slot
// unchanged, when src has its share already.
func (s *Slot) Rebind(src string) bool {
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.counted && s.src == src {
		return true
	}
	if l.maxPerSource > 0 && l.bySource[src] >= l.maxPerSource {
		return false
	}
	if s.counted {
		if l.bySource[s.src]--; l.bySource[s.src] <= 0 {
			delete(l.bySource, s.src)
		}
	}
	l.bySource[src]++
	s.src, s.counted = src, true
	return true
}

// Release gives the place back; calls after the first do nothing.
func (s *Slot) Release() {
	if s == nil || s.released.Swap(true) {
		return
	}
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if s.counted {
		if l.bySource[s.src]--; l.bySource[s.src] <= 0 {
			delete(l.bySource, s.src)
		}
	}
}

// Conn returns c releasing the slot when closed. It keeps CloseWrite
// (half-close) when c has it.
func (s *Slot) Conn(c net.Conn) net.Conn { return &slotConn{Conn: c, s: s} }

type slotConn struct {
	net.Conn
	s *Slot
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.s.Release()
	return err
}

func (c *slotConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// SourceIP is the IP of a connection's remote address, the key of its
// per-source share ("" when it has none).
func SourceIP(c net.Conn) string {
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.IP.String()
	case nil:
		return ""
	default:
		host, _, err := net.SplitHostPort(a.String())
		if err != nil {
			return a.String()
		}
		return host
	}
}
