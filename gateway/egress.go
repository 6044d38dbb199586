package gateway

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"time"
)

// runEgress keeps one listener per egress listener of the configuration
// (on the imported services' virtual IPs) until ctx ends.
func (g *Gateway) runEgress(ctx context.Context) {
	type run struct {
		addr string
		ln   net.Listener
		done chan struct{}
	}
	running := map[string]*run{}
	var wg sync.WaitGroup
	defer func() {
		for _, r := range running {
			r.ln.Close()
		}
		wg.Wait()
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
			for name, l := range cfg.egress {
				if _, ok := running[name]; ok {
					continue
				}
				ln, err := net.Listen("tcp", l.addr)
				if err != nil {
					g.log.Error("egress listener not started", "listener", name, "addr", l.addr, "err", err)
					continue
				}
				r := &run{addr: l.addr, ln: ln, done: make(chan struct{})}
				running[name] = r
				wg.Add(1)
				go func() {
					defer wg.Done()
					g.serveEgress(ctx, ln, name)
				}()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func (g *Gateway) serveEgress(ctx context.Context, ln net.Listener, name string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
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
// gateways, trying another gateway when one cannot be reached.
func (g *Gateway) egressConn(ctx context.Context, client net.Conn, name string) {
	defer client.Close()
	start := time.Now()
	cfg, _ := g.config()
	l, ok := cfg.egress[name]
	oc := cfg.out[l.cluster]
	if !ok || oc == nil {
		g.log.Warn("connection dropped: its listener is no longer configured", "listener", name, "client", client.RemoteAddr())
		return
	}
	service, peerTD := serviceOf(l.cluster), oc.peerTD
	var stream net.Conn
	var r *bufio.Reader
	up, e, err := dialPool(ctx, oc.pool, oc.timeout, func(ctx context.Context, addr string) (net.Conn, error) {
		st, err := g.tunnels.open(ctx, addr, oc.peerTD, oc.timeout)
		if err != nil {
			return nil, err
		}
		st.SetDeadline(time.Now().Add(oc.timeout))
		if err := writeHeader(st, header{SNI: oc.sni}); err != nil {
			st.Close()
			return nil, err
		}
		br := bufio.NewReader(st)
		if err := readStatus(br); err != nil {
			st.Close()
			var ref *errRefused
			if errors.As(err, &ref) {
				return nil, &permanent{err}
			}
			return nil, err
		}
		st.SetDeadline(time.Time{})
		stream, r = st, br
		return st, nil
	})
	var perm *permanent
	switch {
	case errors.As(err, &perm):
		g.m.conns.WithLabelValues("egress", service, peerTD, "refused").Inc()
		g.log.Info("connection refused by the peer", "direction", "egress", "service", service, "peer", peerTD, "client", client.RemoteAddr(), "reason", perm.err)
		return
	case err != nil:
		g.m.conns.WithLabelValues("egress", service, peerTD, "unavailable").Inc()
		g.log.Warn("no gateway of the peer could be reached", "service", service, "peer", peerTD, "err", err)
		return
	}
	defer oc.pool.done(e)
	defer up.Close()
	g.m.connectTime.WithLabelValues("egress").Observe(time.Since(start).Seconds())
	g.m.active.WithLabelValues("egress").Inc()
	sent, recvd := pipe(client, client, stream, r)
	g.m.active.WithLabelValues("egress").Dec()
	g.m.bytes.WithLabelValues("egress", service, peerTD).Add(float64(sent + recvd))
	g.m.conns.WithLabelValues("egress", service, peerTD, "ok").Inc()
	g.log.Info("connection", "direction", "egress", "service", service, "peer", peerTD, "client", client.RemoteAddr(), "gateway", e.addr,
		"bytes_out", sent, "bytes_in", recvd, "duration", time.Since(start).Round(time.Millisecond))
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
