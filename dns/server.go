package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/internal/acceptloop"
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
	// AllowRecursionFrom lists the client networks whose queries outside
	// the mesh domain are forwarded; others get REFUSED for them (mesh
	// names are answered for everyone). When nil: DefaultAllowRecursionFrom
	// of this host's interface addresses (an empty, non-nil list allows
	// no one).
	AllowRecursionFrom []netip.Prefix
	// MaxForwards bounds the queries being forwarded upstream at once; the
	// excess get SERVFAIL at once. 256 when zero.
	MaxForwards int
	// UpstreamTimeout is how long one upstream has to answer; 2s when
	// zero. A query tries each upstream in turn, within twice this in all.
	UpstreamTimeout time.Duration
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
	// AcceptMetrics counts the TCP listener's accept retries and
	// refusals; not counted when nil.
	AcceptMetrics *acceptloop.Metrics
}

// Server is a mesh DNS server.
type Server struct {
	cfg          Config
	domain       string // canonical, lowercase, trailing dot
	domainLabels int
	view         *view
	ttl          uint32
	m            *metrics
	fwd          *forwarder
	acl          []netip.Prefix
}

// Bounds on TCP clients: connections in all and from one address.
const (
	MaxTCPConnections          = 1024
	MaxTCPConnectionsPerSource = 64
)

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
	if cfg.MaxForwards < 0 || cfg.UpstreamTimeout < 0 {
		return nil, errors.New("dns: MaxForwards and UpstreamTimeout must not be negative")
	}
	if cfg.MaxForwards == 0 {
		cfg.MaxForwards = DefaultMaxForwards
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 2 * time.Second
	}
	acl := cfg.AllowRecursionFrom
	if acl == nil {
		acl = DefaultAllowRecursionFrom(interfaceAddrs(cfg.Logger))
	}
	s := &Server{
		cfg:          cfg,
		domain:       mdns.CanonicalName(cfg.Domain),
		domainLabels: mdns.CountLabel(mdns.CanonicalName(cfg.Domain)),
		view:         newView(cfg.PeerOrder),
		ttl:          uint32(cfg.TTL / time.Second),
		fwd:          newForwarder(cfg.Upstreams, cfg.MaxForwards, cfg.UpstreamTimeout),
		acl:          acl,
	}
	s.m = newMetrics(s, cfg.Registerer)
	return s, nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	pc, ln := s.cfg.PacketConn, s.cfg.Listener
	if pc == nil {
		var err error
		if pc, err = net.ListenPacket("udp", s.cfg.Addr); err != nil {
			return fmt.Errorf("dns: %w", err)
		}
	}
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.Addr); err != nil {
			pc.Close()
			return fmt.Errorf("dns: %w", err)
		}
	}
	s.cfg.Logger.Info("dns serving", "udp", pc.LocalAddr().String(), "tcp", ln.Addr().String(), "domain", s.domain,
		"upstreams", s.cfg.Upstreams, "allow_recursion_from", s.acl)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.watchLoop(gctx) })
	g.Go(func() error { return s.serveUDP(gctx, pc) })
	// TCP connections are bounded in all and per client address (each
	// costs a goroutine and a descriptor); an idle one closes after
	// ReadTimeout.
	ln = acceptloop.Wrap(ln, acceptloop.Config{Name: "dns", Logger: s.cfg.Logger, Metrics: s.cfg.AcceptMetrics,
		Limits: acceptloop.NewLimiter(MaxTCPConnections, MaxTCPConnectionsPerSource)})
	tcp := &mdns.Server{Handler: s, Listener: ln, Net: "tcp", ReadTimeout: 5 * time.Second}
	g.Go(func() error {
		err := tcp.ActivateAndServe()
		if gctx.Err() != nil {
			return nil
		}
		return err
	})
	g.Go(func() error {
		<-gctx.Done()
		pc.Close()
		tcp.Shutdown()
		s.fwd.close()
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
