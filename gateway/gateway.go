// Package gateway is `strait gateway`, the mesh gateway data plane: the
// only thing sites expose to each other. It is configured entirely over
// xDS by its site's servers (see controlplane/xds) and holds its own SVID
// spiffe://<td>/strait/gateway/<name>.
//
//   - Egress: it listens on the virtual IPs of imported services, so an
//     unmodified TCP client reaches api.payments.<peer>.mesh:8080 as over a
//     VPN, and carries each connection to one of the peer's gateways.
//   - Between gateways: a few pooled TLS 1.3 connections per peer gateway
//     (TunnelsPerPeer), both sides presenting gateway SVIDs checked against
//     their own trust domain's bundle, multiplexing every connection as a
//     stream (see proto.go): no handshake per client connection.
//   - Ingress: it admits a stream only from a peer the SNI's service is
//     exported to, authorizes it against the intentions (the RBAC rule of
//     the SNI's filter chain and policy.Decide over the intentions in its
//     metadata; default deny), and forwards it to the least-loaded passing
//     instance, retrying another on connect failure.
//   - Bounds: streams per tunnel and per peer, bytes held across all
//     streams (a tunnelmux.Budget), and egress listeners are capped;
//     what is refused is reset or left closed with a reason, counted and
//     logged once.
//
// Endpoints that fail to connect are ejected for a while; clusters have a
// connection limit; on shutdown the gateway stops accepting and drains.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/internal/metricsserver"
	"github.com/straitmesh/strait/internal/tunnelmux"
	"github.com/straitmesh/strait/trust/enroll"
	"github.com/straitmesh/strait/trust/mtls"
)

// Config configures a gateway.
type Config struct {
	// Name is the gateway's name in its site, a DNS label. Required.
	Name string
	// Servers are the site's server addresses. Required.
	Servers []string
	// DataDir keeps the gateway's identity. Required.
	DataDir string
	// JoinToken is a gateway token (`strait token create --kind gateway`),
	// needed on the first start only.
	JoinToken string
	// WANAddr is where peers' gateways connect (the one port a site
	// exposes). Required. Ignored when WANListener is set.
	WANAddr     string
	WANListener net.Listener
	// AdvertiseWAN is the address announced to peers; WANAddr when empty.
	AdvertiseWAN string
	// MetricsAddr serves Prometheus /metrics; off when empty.
	MetricsAddr string
	// DrainTimeout bounds the wait for connections at shutdown; 10s when zero.
	DrainTimeout time.Duration
	// HeartbeatInterval is how often the gateway tells the servers it is
	// alive; 5s when zero.
	HeartbeatInterval time.Duration
	// RenewCheck is how often the SVID is checked for renewal; 1m when zero.
	RenewCheck time.Duration
	// HandshakeTimeout bounds a peer's TLS handshake and each stream's
	// header: garbage and half-open connections are dropped after it. 10s
	// when zero.
	HandshakeTimeout time.Duration
	// WANMaxConnections bounds the connections open on the WAN port
	// (peers' tunnels, passthrough to this site's servers, handshakes in
	// progress); more are closed at once. DefaultWANMaxConnections (4096)
	// when zero.
	WANMaxConnections int
	// WANMaxConnectionsPerSource bounds those from one IP address;
	// DefaultWANMaxConnectionsPerSource (128) when zero, at most
	// WANMaxConnections.
	WANMaxConnectionsPerSource int
	// PassthroughIdleTimeout closes a connection passed through to this
	// site's servers (SNI servers.<td>) once no byte has crossed it either
	// way for this long; DefaultPassthroughIdleTimeout (5m) when zero.
	// Keep it above the servers' keepalive ping (1m), which live
	// connections answer.
	PassthroughIdleTimeout time.Duration
	// TunnelsPerPeer is how many tunnels (TLS connections) this gateway
	// keeps to each peer gateway, its streams spread over them in turn:
	// one TLS connection is encrypted by one core at a time, so bulk
	// streams to a peer go faster over several. One per CPU, at most 4,
	// when zero.
	TunnelsPerPeer int
	// MaxStreamsPerTunnel bounds the streams a peer gateway may have open
	// at once on one tunnel (TLS connection) to this gateway; opens beyond
	// it are reset with the reason, and counted. 4096 when zero.
	MaxStreamsPerTunnel int
	// MaxStreamsPerPeer bounds the streams being served at once for all
	// the gateways of one peer trust domain, over all their tunnels;
	// streams beyond it are reset with the reason, and counted. 16384
	// when zero.
	MaxStreamsPerPeer int
	// TunnelBufferMiB bounds the bytes received on tunnels (from peers'
	// gateways on ingress, from the peer's answers on egress) and not yet
	// passed on, across all streams; a stream that would pass it resets
	// the one holding the most (see tunnelmux.Budget). 256 when zero.
	TunnelBufferMiB int
	// MaxEgressListeners bounds the egress listeners (one per imported
	// service and port) the gateway opens; those beyond it are not opened,
	// logged once and counted. 4096 when zero.
	MaxEgressListeners int
	// AccessLog logs every connection served (at info, msg=connection:
	// direction, service, peer, source or client, upstream, bytes each
	// way, duration) when it ends; off when false. Refusals and failures
	// are logged at info whatever it says.
	AccessLog  bool
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	Now        func() time.Time
}

// Defaults of the gateway's bounds (Config).
const (
	DefaultMaxEgressListeners  = 4096
	DefaultMaxStreamsPerTunnel = 4096
	DefaultMaxStreamsPerPeer   = 16384
	DefaultTunnelBufferMiB     = 256
)

// Gateway is a running gateway.
type Gateway struct {
	cfg Config
	log *slog.Logger
	// refusals throttles the log lines of refused ingress streams: one
	// per peer, service and cause every 10s (each is counted all the same).
	refusals *logThrottle
	// serving ends when connections in flight are cut, at the end of a
	// drain; set by Run before any listener starts.
	serving context.Context
	td      spiffeid.TrustDomain
	ident   *mtls.Identity // own SVID; federated with peers' bundles from xDS
	client  *apiclient.Client
	m       *metrics
	wan     *wanBounds
	// pools and resources belong to the ADS loop (one at a time): endpoint
	// state and the last accepted resources, kept across streams.
	pools     pools
	resources resources

	cfgMu    sync.RWMutex
	cur      *config
	changed  chan struct{} // closed and replaced on each new config
	tunnels  *tunnels
	budget   *tunnelmux.Budget // bytes received on tunnels and not yet passed on
	active   inflight
	draining atomic.Bool
	wanAddr  string
	ready    chan struct{}
	once     sync.Once
	// revocation and revokeOnce: see revoked.
	revocation enroll.RevocationWatch
	revokeOnce sync.Once
}

// New checks cfg.
func New(cfg Config) (*Gateway, error) {
	if cfg.Name == "" || cfg.DataDir == "" || len(cfg.Servers) == 0 {
		return nil, errors.New("gateway: name, data dir and servers are required")
	}
	if cfg.WANAddr == "" && cfg.WANListener == nil {
		return nil, errors.New("gateway: wan address is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.RenewCheck == 0 {
		cfg.RenewCheck = time.Minute
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.WANMaxConnections == 0 {
		cfg.WANMaxConnections = DefaultWANMaxConnections
	}
	if cfg.WANMaxConnectionsPerSource == 0 {
		cfg.WANMaxConnectionsPerSource = min(DefaultWANMaxConnectionsPerSource, max(cfg.WANMaxConnections, 1))
	}
	if cfg.PassthroughIdleTimeout == 0 {
		cfg.PassthroughIdleTimeout = DefaultPassthroughIdleTimeout
	}
	if cfg.WANMaxConnections < 0 || cfg.WANMaxConnectionsPerSource < 0 || cfg.WANMaxConnectionsPerSource > cfg.WANMaxConnections {
		return nil, fmt.Errorf("gateway: wan connection limits %d in all, %d per source: must not be negative, and a source's share at most the total",
			cfg.WANMaxConnections, cfg.WANMaxConnectionsPerSource)
	}
	if cfg.PassthroughIdleTimeout < 0 || cfg.HandshakeTimeout < 0 {
		return nil, errors.New("gateway: negative passthrough idle or handshake timeout")
	}
	if cfg.TunnelsPerPeer < 0 || cfg.TunnelsPerPeer > 64 {
		return nil, fmt.Errorf("gateway: %d tunnels per peer gateway (1 to 64)", cfg.TunnelsPerPeer)
	}
	for _, l := range []struct {
		v    *int
		def  int
		name string
	}{
		{&cfg.MaxStreamsPerTunnel, DefaultMaxStreamsPerTunnel, "max streams per tunnel"},
		{&cfg.MaxStreamsPerPeer, DefaultMaxStreamsPerPeer, "max streams per peer"},
		{&cfg.TunnelBufferMiB, DefaultTunnelBufferMiB, "tunnel buffer (MiB)"},
	} {
		if *l.v < 0 {
			return nil, fmt.Errorf("gateway: %s is %d (at least 1; 0 means %d)", l.name, *l.v, l.def)
		}
		if *l.v == 0 {
			*l.v = l.def
		}
	}
	if cfg.MaxEgressListeners < 0 {
		return nil, fmt.Errorf("gateway: max egress listeners %d (at least 1; 0 means %d)", cfg.MaxEgressListeners, DefaultMaxEgressListeners)
	}
	if cfg.MaxEgressListeners == 0 {
		cfg.MaxEgressListeners = DefaultMaxEgressListeners
	}
	if cfg.TunnelsPerPeer == 0 {
		cfg.TunnelsPerPeer = min(runtime.GOMAXPROCS(0), 4)
	}
	reg := cfg.Registerer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, cfg.Gatherer = r, r
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger.With("gateway", cfg.Name), pools: pools{}, changed: make(chan struct{}), ready: make(chan struct{}),
		budget: tunnelmux.NewBudget(int64(cfg.TunnelBufferMiB) << 20), refusals: newLogThrottle(10 * time.Second)}
	g.m = newMetrics(reg, g.budget)
	g.wan = newWANBounds(cfg, reg)
	return g, nil
}

// Ready is closed once the gateway has its first configuration and
// accepts connections.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

func (g *Gateway) setConfig(c *config) {
	g.cfgMu.Lock()
	g.cur = c
	close(g.changed)
	g.changed = make(chan struct{})
	g.cfgMu.Unlock()
	g.ident.SetFederated(peerBundles{g})
	// The site's own CA certificates follow a rotation: the servers'
	// certificates (and, after renewal, this gateway's) come from the new
	// root while the old one is still published.
	if own := c.bundles[g.td.Name()]; len(own) > 0 {
		g.ident.SetBundle(x509bundle.FromX509Authorities(g.td, own))
	}
	g.log.Debug("configuration applied", "version", c.version, "egress", len(c.egress), "ingress", len(c.ingress))
}

func (g *Gateway) config() (*config, <-chan struct{}) {
	g.cfgMu.RLock()
	defer g.cfgMu.RUnlock()
	return g.cur, g.changed
}

// peerBundles serves the peers' bundles from the current configuration,
// each for its own trust domain only.
type peerBundles struct{ g *Gateway }

func (p peerBundles) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	c, _ := p.g.config()
	if c == nil || td == p.g.td {
		return nil, fmt.Errorf("no bundle for %s", td)
	}
	certs, ok := c.bundles[td.Name()]
	if !ok {
		return nil, fmt.Errorf("%s is not a peer", td)
	}
	return x509bundle.FromX509Authorities(td, certs), nil
}

// Run joins or loads the identity, then serves until ctx ends, and drains.
func (g *Gateway) Run(ctx context.Context) error {
	if err := g.loadOrJoin(ctx); err != nil {
		return err
	}
	cl, err := apiclient.Dial(apiclient.Config{Addrs: g.cfg.Servers, CA: g.ident.Bundle().X509Authorities(), Identity: g.ident})
	if err != nil {
		return err
	}
	defer cl.Close()
	g.client = cl
	ln := g.cfg.WANListener
	if ln == nil {
		if ln, err = net.Listen("tcp", g.cfg.WANAddr); err != nil {
			return fmt.Errorf("wan address: %w", err)
		}
	}
	g.wanAddr = ln.Addr().String()
	if g.cfg.AdvertiseWAN == "" {
		g.cfg.AdvertiseWAN = g.wanAddr
	}
	g.tunnels = newTunnels(g)

	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	g.serving = serveCtx
	eg, ectx := errgroup.WithContext(ctx)
	eg.Go(func() error { return g.runADS(ectx, cl.Conn()) })
	eg.Go(func() error { return g.heartbeatLoop(ectx) })
	eg.Go(func() error { return g.renewLoop(ectx) })
	if g.cfg.MetricsAddr != "" {
		eg.Go(func() error { return g.serveMetrics(ectx) })
	}
	// A WAN listener that fails for good ends the gateway (an error from
	// Run): heartbeats stop with it, so its instance goes critical and
	// peers stop sending to a gateway that would answer nothing.
	ingressDone, ingressErr := make(chan struct{}), make(chan error, 1)
	go func() { defer close(ingressDone); ingressErr <- g.serveIngress(serveCtx, ln) }()
	eg.Go(func() error {
		select {
		case err := <-ingressErr:
			if err != nil {
				g.log.Error("wan listener failed; stopping the gateway", "wan", g.wanAddr, "err", err)
				return fmt.Errorf("wan listener %s: %w", g.wanAddr, err)
			}
		case <-ectx.Done():
		}
		return nil
	})
	egressDone := make(chan struct{})
	go func() { defer close(egressDone); g.runEgress(ectx) }() // ends with any task's failure too
	go func() {
		// Ready once configured and both sides listen.
		for {
			c, ch := g.config()
			if c != nil {
				g.once.Do(func() { close(g.ready) })
				return
			}
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
		}
	}()
	g.log.Info("gateway running", "wan", g.wanAddr, "trust_domain", g.td.Name())
	err = eg.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	// Drain: stop accepting (egress listeners close with ctx), let
	// connections in flight finish for a while, then cut the rest.
	// Egress connections are among them: their listeners' loops are
	// waited for only once the tunnels are cut, so a client holding one
	// open cannot hold the gateway past DrainTimeout.
	g.draining.Store(true)
	ln.Close()
	g.tunnels.goAway()
	done := make(chan struct{})
	go func() { g.active.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(g.cfg.DrainTimeout):
		g.log.Warn("drain timeout: closing remaining connections")
	}
	stopServing()
	g.tunnels.close()
	<-egressDone
	<-ingressDone
	g.log.Info("gateway stopped")
	return err
}

func (g *Gateway) serveMetrics(ctx context.Context) error {
	ln, err := net.Listen("tcp", g.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if err := metricsserver.ServeListener(ctx, ln, g.cfg.Gatherer, g.log); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// TunnelBuffered is the bytes received on tunnels and not yet passed on,
// across all streams (at most Config.TunnelBufferMiB).
func (g *Gateway) TunnelBuffered() int64 { return g.budget.Buffered() }

// tunnelConfig is the configuration of a tunnel with a gateway of peer (a
// trust domain): 16 MiB stream windows (a bulk stream across a WAN needs
// its bandwidth-delay product in flight), the gateway's stream cap and
// shared buffer budget, and refusals counted, and logged once a tunnel
// and cause (a peer opening streams in a loop gets one line, not one a
// stream).
func (g *Gateway) tunnelConfig(peer string) tunnelmux.Config {
	var logged sync.Map
	return tunnelmux.Config{Window: 16 << 20, MaxStreams: g.cfg.MaxStreamsPerTunnel, Budget: g.budget,
		OnRefuse: func(cause string) { g.tunnelRefused(peer, cause, &logged) }}
}

// tunnelRefused counts a stream reset for a bound, and logs the first of
// each cause on a tunnel (logged holds the causes seen).
func (g *Gateway) tunnelRefused(peer, cause string, logged *sync.Map) {
	g.m.tunnelRefusals.WithLabelValues(cause).Inc()
	if _, seen := logged.LoadOrStore(cause, true); !seen {
		g.log.Info("tunnel stream refused; further refusals on this tunnel are counted only", "peer", peer, "cause", cause,
			"buffered", g.budget.Buffered(), "buffer_budget", g.budget.Limit(),
			"max_streams_per_tunnel", g.cfg.MaxStreamsPerTunnel, "max_streams_per_peer", g.cfg.MaxStreamsPerPeer)
	}
}

// inflight counts connections in progress. Unlike a sync.WaitGroup, it may
// grow from zero while someone waits for it to drain (a peer's stream can
// arrive while the gateway drains).
type inflight struct {
	mu   sync.Mutex
	cond sync.Cond
	n    int
}

func (f *inflight) Add(d int) {
	f.mu.Lock()
	f.n += d
	if f.n <= 0 && f.cond.L != nil {
		f.cond.Broadcast()
	}
	f.mu.Unlock()
}

func (f *inflight) Done() { f.Add(-1) }

// Wait waits until no connection is in progress.
func (f *inflight) Wait() {
	f.mu.Lock()
	if f.cond.L == nil {
		f.cond.L = &f.mu
	}
	for f.n > 0 {
		f.cond.Wait()
	}
	f.mu.Unlock()
}
