package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
)

// Watcher yields catalog watch events (see controlplane/state).
type Watcher interface {
	Next(ctx context.Context) (*apipb.WatchEvent, error)
}

// Config configures a Server.
type Config struct {
	// Addr is the UDP and TCP address to serve on. Ignored when PacketConn
	// and Listener are set (tests bind port 0).
	Addr       string
	PacketConn net.PacketConn
	Listener   net.Listener
	// Domain is the mesh domain; "mesh." when empty.
	Domain string
	// Site is the local site's name. Required.
	Site string
	// TTL of answers; 5s when zero. Negative answers use it too (SOA minimum).
	TTL time.Duration
	// Upstreams receive queries outside the mesh domain (host:port); such
	// queries are refused when empty.
	Upstreams []string
	// PeerOrder is the failover preference for <svc>.<ns>.<domain>: when
	// the local service has no passing instance, the first of these peers
	// that exports a service of that name with instances answers, then
	// any other peer, by name.
	PeerOrder []string
	// Watch starts a catalog watch after an index (0: full state). Required.
	Watch func(ctx context.Context, fromIndex uint64) (Watcher, error)
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Registerer for metrics; none when nil.
	Registerer prometheus.Registerer
}

// Server is a mesh DNS server.
type Server struct {
	cfg          Config
	domain       string // canonical, lowercase, trailing dot
	domainLabels int
	view         *view
	ttl          uint32
	m            *metrics
	client       *mdns.Client
}

// New validates cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Domain == "" {
		cfg.Domain = "mesh."
	}
	if err := meshname.ValidLabel(cfg.Site); err != nil {
		return nil, fmt.Errorf("dns: site: %w", err)
	}
	if cfg.Watch == nil {
		return nil, errors.New("dns: Watch is required")
	}
	if _, ok := mdns.IsDomainName(cfg.Domain); !ok {
		return nil, fmt.Errorf("dns: domain %q is not a domain name", cfg.Domain)
	}
	if cfg.TTL == 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		cfg:          cfg,
		domain:       mdns.CanonicalName(cfg.Domain),
		domainLabels: mdns.CountLabel(mdns.CanonicalName(cfg.Domain)),
		view:         newView(cfg.PeerOrder),
		ttl:          uint32(cfg.TTL / time.Second),
		client:       &mdns.Client{Timeout: 2 * time.Second},
	}
	s.m = newMetrics(s, cfg.Registerer)
	return s, nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	pc := s.cfg.PacketConn
	if pc == nil {
		var err error
		if pc, err = net.ListenPacket("udp", s.cfg.Addr); err != nil {
			return fmt.Errorf("dns: %w", err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.watchLoop(gctx) })
	g.Go(func() error { return s.serveUDP(gctx, pc) })
	tcp := &mdns.Server{Handler: s, Listener: s.cfg.Listener, Addr: s.cfg.Addr, Net: "tcp", ReadTimeout: 5 * time.Second}
	g.Go(func() error {
		var err error
		if tcp.Listener != nil {
			err = tcp.ActivateAndServe()
		} else {
			err = tcp.ListenAndServe()
		}
		if gctx.Err() != nil {
			return nil
		}
		return err
	})
	g.Go(func() error {
		<-gctx.Done()
		pc.Close()
		tcp.Shutdown()
		return nil
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// watchLoop keeps the view current, resuming after errors.
func (s *Server) watchLoop(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		s.view.mu.RLock()
		from := s.view.index
		s.view.mu.RUnlock()
		w, err := s.cfg.Watch(ctx, from)
		if err == nil {
			for {
				ev, nerr := w.Next(ctx)
				if nerr != nil {
					err = nerr
					break
				}
				s.view.apply(ev)
				backoff = 100 * time.Millisecond
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		s.cfg.Logger.Warn("dns lost the catalog watch; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

// Ready reports whether the view holds the full catalog.
func (s *Server) Ready() bool {
	s.view.mu.RLock()
	defer s.view.mu.RUnlock()
	return s.view.synced
}

func (s *Server) inDomain(name string) bool {
	return name == s.domain || strings.HasSuffix(name, "."+s.domain)
}

// Listen binds a UDP socket and a TCP listener on the same address, as a
// DNS server needs. With port 0, the kernel picks the UDP port, whose TCP
// twin may be taken: then it tries another.
func Listen(addr string) (net.PacketConn, net.Listener, error) {
	var errs []error
	for range 50 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		errs = append(errs, err)
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			break
		}
	}
	return nil, nil, errors.Join(errs...)
}
