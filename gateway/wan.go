package gateway

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/straitmesh/strait/internal/acceptloop"
)

// Defaults of the WAN port's bounds (see Config).
const (
	DefaultWANMaxConnections          = 4096
	DefaultWANMaxConnectionsPerSource = 128
	DefaultPassthroughIdleTimeout     = 5 * time.Minute
)

// wanBounds holds what bounds the WAN port: the connection limits, their
// metrics, and the accept loops' retry counter (shared with egress).
type wanBounds struct {
	limits     *acceptloop.Limiter
	accepts    *acceptloop.Metrics
	refused    *prometheus.CounterVec
	idleClosed prometheus.Counter
	warn       rate.Sometimes // refusals are logged at most this often
}

func newWANBounds(cfg Config, reg prometheus.Registerer) *wanBounds {
	w := &wanBounds{
		limits:  acceptloop.NewLimiter(cfg.WANMaxConnections, cfg.WANMaxConnectionsPerSource),
		accepts: acceptloop.NewMetrics(reg),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_gateway_wan_connections_refused_total",
			Help: "Connections to the WAN port closed unserved, by cause (max_connections, max_connections_per_source, passthrough_alpn: a servers.<td> ClientHello offering anything but h2)."},
			[]string{"cause"}),
		idleClosed: prometheus.NewCounter(prometheus.CounterOpts{Name: "strait_gateway_passthrough_idle_closed_total",
			Help: "Connections passed through to this site's servers closed after no byte crossed either way for the passthrough idle timeout."}),
		warn: rate.Sometimes{Interval: 10 * time.Second},
	}
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strait_gateway_wan_open_connections",
		Help: "Connections open on the WAN port (tunnels from peers' gateways, passthrough to this site's servers, and those still handshaking)."},
		func() float64 { return float64(w.limits.Open()) })
	reg.MustRegister(w.refused, w.idleClosed, open)
	return w
}

// refuse closes a WAN connection over a bound, and counts and logs it.
func (g *Gateway) refuseWAN(c net.Conn, cause string) {
	c.Close()
	g.wan.refused.WithLabelValues(cause).Inc()
	g.wan.warn.Do(func() {
		g.log.Warn("connection refused on the wan port", "cause", cause, "remote", c.RemoteAddr().String(),
			"open", g.wan.limits.Open(), "max_connections", g.cfg.WANMaxConnections,
			"max_connections_per_source", g.cfg.WANMaxConnectionsPerSource)
	})
}

// idleConn ends reads once no byte has crossed a relay either way for
// idle: both sides of a relay share last (the time of the last byte read
// from either, in Unix nanoseconds), so a quiet direction lives while the
// other one talks. One goroutine reads each idleConn.
type idleConn struct {
	net.Conn
	idle    time.Duration
	last    *atomic.Int64
	expired *atomic.Bool
}

// newIdlePair wraps the two sides of a relay.
func newIdlePair(a, b net.Conn, idle time.Duration) (ia, ib *idleConn, expired *atomic.Bool) {
	last, exp := new(atomic.Int64), new(atomic.Bool)
	last.Store(time.Now().UnixNano())
	return &idleConn{a, idle, last, exp}, &idleConn{b, idle, last, exp}, exp
}

func (c *idleConn) Read(b []byte) (int, error) {
	for {
		c.Conn.SetReadDeadline(time.Unix(0, c.last.Load()).Add(c.idle))
		n, err := c.Conn.Read(b)
		if n > 0 {
			c.last.Store(time.Now().UnixNano())
			return n, err
		}
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			if time.Since(time.Unix(0, c.last.Load())) < c.idle {
				continue // the other direction spoke meanwhile
			}
			c.expired.Store(true)
		}
		return n, err
	}
}

// CloseWrite half-closes the connection beneath, as pipe expects.
func (c *idleConn) CloseWrite() error {
	closeWrite(c.Conn)
	return nil
}
