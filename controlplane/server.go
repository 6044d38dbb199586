package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/mux"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/controlplane/xds"
	"github.com/straitmesh/strait/dns"
	"github.com/straitmesh/strait/federation/peering"
	"github.com/straitmesh/strait/internal/acceptloop"
	"github.com/straitmesh/strait/internal/metricsserver"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/authority"
	"github.com/straitmesh/strait/trust/mtls"
)

// Server is one control-plane server of a site.
type Server struct {
	cfg       Config
	log       *slog.Logger
	ln        net.Listener
	advertise string

	store *state.Store

	// Set by Run before any task starts; read-only afterwards.
	id    *identity
	ident *mtls.Identity
	auth  *authority.Authority
	mux   *mux.Mux
	raft  *raft.Raft // node.raft, for metrics and tests
	close []func() error

	node    *raftNode
	leaders *leaderRunner       // leader-only work: see leaderTasks
	accepts *acceptloop.Metrics // accept retries of the server port and the bundle endpoint
	ttl     *ttlTracker
	metrics *metrics
	started chan struct{} // closed when Raft runs
	peering *peering.Manager
	ranOnce sync.Once
}

// New validates cfg and binds the server's port. It does no other I/O.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.BindAddr); err != nil {
			return nil, fmt.Errorf("bind_addr: %w", err)
		}
	}
	adv, err := cfg.advertise(ln.Addr())
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.NodeID),
		ln:        ln,
		advertise: adv,
		store:     state.NewStore(0),
		started:   make(chan struct{}),
	}
	s.metrics = newMetrics(s, cfg.Registerer)
	s.accepts = acceptloop.NewMetrics(cfg.Registerer)
	s.leaders = newLeaderRunner(s.log)
	s.node = &raftNode{store: s.store, self: raft.ServerID(cfg.NodeID), log: s.log, now: cfg.Now, heartbeat: cfg.Raft.Heartbeat,
		applyTime: s.metrics.apply, creds: s.clientCreds, leaders: s.leaders, status: s.Status}
	s.ttl = &ttlTracker{node: s.node, store: s.store, now: cfg.Now, log: s.log}
	s.leaderTasks()
	return s, nil
}

// leaderTasks registers the server's leader-only work with its leader
// runner, in order: the barrier that makes the replica current, the
// site's bootstrap (once), the JWT signing key, then the tasks that run
// for the whole term.
func (s *Server) leaderTasks() {
	l := s.leaders
	l.Prepare("barrier", s.node.waitBarrier)
	l.Prepare("bootstrap", func(context.Context) error {
		if s.store.Site() != nil || s.id.bootstrap == nil {
			return nil
		}
		return s.bootstrapSite()
	})
	for _, t := range s.cfg.LeaderTasks {
		l.Go(t.Name, func(ctx context.Context) error { return t.Run(ctx, newCloudSite(s)) })
	}
	l.Go("authority", func(ctx context.Context) error { return s.auth.RunLeader(ctx) })
	l.Go("peering", func(ctx context.Context) error { return s.peering.RunLeader(ctx) })
	l.Go("ttl", s.ttl.run)
}

// bootstrapSite commits the site's first state: its CA, its name and
// the management token.
func (s *Server) bootstrapSite() error {
	cmd, secret, err := s.bootstrapCommand()
	if err != nil {
		return err
	}
	if _, _, err := s.node.Apply(context.Background(), cmd); err != nil {
		return fmt.Errorf("commit site: %w", err)
	}
	if s.id.persistent {
		if err := dataDir(s.cfg.DataDir).writeNode(&s.id.node); err != nil {
			return err
		}
	}
	s.log.Info("site bootstrapped", "site", s.id.node.Site, "trust_domain", s.id.td.Name())
	if s.cfg.OnBootstrap != nil {
		s.cfg.OnBootstrap(secret)
	}
	return nil
}

// Addr is the address the server advertises for Raft and the API.
func (s *Server) Addr() string { return s.advertise }

// VirtualIPCIDR is the range virtual IPs of imported services come from.
func (s *Server) VirtualIPCIDR() string { return s.cfg.VirtualIPCIDR }

// Store is the local replica of the state.
func (s *Server) Store() *state.Store { return s.store }

// Bundle returns the site's CA certificates (after Run has started).
func (s *Server) Bundle() *x509bundle.Bundle { return s.ident.Bundle() }

// Authority is the site authority on this server (after Run has started).
func (s *Server) Authority() *authority.Authority { return s.auth }

// Started is closed once Raft runs.
func (s *Server) Started() <-chan struct{} { return s.started }

// TrustDomain is the site's trust domain (after Run has started).
func (s *Server) TrustDomain() spiffeid.TrustDomain { return s.id.td }

func (s *Server) authorizeServer(id spiffeid.ID) error {
	if !trust.IsServer(id, s.id.td) {
		return fmt.Errorf("%s is not a server of %s", id, s.id.td)
	}
	return nil
}

// Run prepares the identity (bootstrapping or joining on first start),
// starts Raft and serves until ctx ends. It may be called once.
func (s *Server) Run(ctx context.Context) (err error) {
	ran := true
	s.ranOnce.Do(func() { ran = false })
	if ran {
		return errors.New("controlplane: Run called twice")
	}
	defer func() {
		for i := len(s.close) - 1; i >= 0; i-- {
			if cerr := s.close[i](); cerr != nil && !errors.Is(cerr, net.ErrClosed) && err == nil {
				err = cerr
			}
		}
	}()
	s.close = append(s.close, s.ln.Close)
	if s.id, err = (&identityLoader{cfg: s.cfg, log: s.log, advertise: s.advertise}).prepareIdentity(ctx); err != nil {
		return err
	}
	if s.ident, err = newIdentitySource(s.id, s.cfg.Now); err != nil {
		return err
	}
	s.ident.SetFederated(peering.PeerBundles{Store: s.store})
	if s.auth, err = newAuthority(&s.cfg, s.id, s.ident, s.store, s, s.log); err != nil {
		return err
	}
	if s.peering, err = s.newPeering(); err != nil {
		return err
	}
	s.mux, err = mux.New(mux.Config{Listener: s.ln, Identity: s.ident, AuthorizeServer: s.authorizeServer, Logger: s.log,
		MaxConnections: s.cfg.APIMaxConnections, MaxConnectionsPerSource: s.cfg.APIMaxConnectionsPerSource,
		Registerer: s.cfg.Registerer, AcceptMetrics: s.accepts})
	if err != nil {
		return err
	}
	admin := raftAdmin{raftNode: s.node, s: s}
	apiSrv := api.New(api.Config{
		Store: s.store, Raft: s.node, Catalog: s.ttl, Operator: admin, Cluster: admin, Bundles: s,
		Authority: s.auth, Peering: s.peering,
		TrustDomain: s.TrustDomain, Logger: s.log, Registerer: s.cfg.Registerer, Now: s.cfg.Now,
		SignRatePerCaller: s.cfg.SignRatePerCaller, IdleTimeout: s.cfg.APIIdleTimeout})
	gs := grpc.NewServer(append(apiSrv.ServerOptions(), grpc.Creds(mux.Handshaked()))...)
	apiSrv.RegisterServices(gs)
	xs := xds.New(xds.Config{Inputs: s.xdsInputs, Changed: s.xdsChanged, Caller: meshCaller, Logger: s.log, Registerer: s.cfg.Registerer})
	xs.Register(gs)

	muxCtx, stopMux := context.WithCancel(context.WithoutCancel(ctx))
	defer stopMux()
	muxDone := make(chan error, 1)
	go func() { muxDone <- s.mux.Serve(muxCtx) }()
	grpcDone := make(chan error, 1)
	go func() { grpcDone <- gs.Serve(s.mux.GRPCListener()) }()

	closers, err := s.node.start(raftStorage{cfg: &s.cfg, layer: s.mux.RaftLayer(), advertise: s.advertise, bootstrap: s.id.bootstrap != nil})
	s.close = append(s.close, closers...)
	if err != nil {
		stopMux()
		gs.Stop()
		return err
	}
	s.raft = s.node.raft
	close(s.started)
	s.log.Info("server started", "site", s.id.node.Site, "trust_domain", s.id.td.Name(), "addr", s.advertise)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.node.leadership(gctx) })
	g.Go(func() error { return s.auth.Run(gctx) })
	g.Go(func() error { return s.node.promoteLoop(gctx, s.id.node.JoinIndex) })
	g.Go(func() error { return xs.Run(gctx) })
	if s.cfg.MetricsAddr != "" {
		g.Go(func() error { return s.serveMetrics(gctx) })
	}
	if s.cfg.DNSAddr != "" || s.cfg.DNSPacketConn != nil {
		d, err := s.newDNS()
		if err != nil {
			return err
		}
		g.Go(func() error { return d.Run(gctx) })
	}
	if s.cfg.BundleAddr != "" || s.cfg.BundleListener != nil {
		g.Go(func() error { return s.serveBundle(gctx) })
	}
	g.Go(func() error {
		select {
		case err := <-muxDone:
			// Only a listener broken for good: temporary accept errors
			// (descriptors exhausted by clients) are retried in the mux.
			if err != nil {
				return fmt.Errorf("server port %s: %w", s.ln.Addr(), err)
			}
		case <-gctx.Done():
		}
		return nil
	})
	runErr := g.Wait()
	if errors.Is(runErr, context.Canceled) {
		runErr = nil
	}
	s.shutdown(gs, stopMux)
	<-grpcDone
	return runErr
}

// meshCaller says who an xDS stream is from: a gateway or a workload.
func meshCaller(ctx context.Context) (xds.Subscriber, bool) {
	if name, ok := api.GatewayCaller(ctx); ok {
		return xds.Subscriber{Gateway: name}, true
	}
	if id, ok := api.WorkloadCaller(ctx); ok {
		return xds.Subscriber{Workload: id}, true
	}
	return xds.Subscriber{}, false
}

// shutdown leaves (if configured), drains the API and stops Raft.
func (s *Server) shutdown(gs *grpc.Server, stopMux func()) {
	if s.cfg.LeaveOnTerminate {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.node.leave(ctx); err != nil {
			s.log.Warn("leave failed", "err", err)
		}
		cancel()
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		gs.Stop()
	}
	s.node.stop()
	stopMux()
	s.node.conns.closeAll()
	s.log.Info("server stopped")
}

func (s *Server) serveMetrics(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics_addr: %w", err)
	}
	if err := metricsserver.ServeListener(ctx, ln, s.cfg.Gatherer, s.log); err != nil {
		return fmt.Errorf("metrics_addr: %w", err)
	}
	return nil
}

// Site is the site's name (after Run has started).
func (s *Server) Site() string { return s.id.node.Site }

// Raft is the server's Raft node, for tests and diagnostics. Do not Apply
// through it: use the API.
func (s *Server) Raft() *raft.Raft { return s.raft }

// IsLeader reports whether this server leads.
func (s *Server) IsLeader() bool { return s.node.IsLeader() }

// Apply commits cmd through Raft (leader only; api.ErrNotLeader
// otherwise) and returns the command's result and log index.
func (s *Server) Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error) {
	return s.node.Apply(ctx, cmd)
}

// Peers lists the Raft configuration.
func (s *Server) Peers() ([]*apipb.RaftPeer, error) { return s.node.Peers() }

func (s *Server) clientCreds() credentials.TransportCredentials {
	return credentials.NewTLS(mtls.ClientConfig(s.ident, s.authorizeServer, mux.ProtoGRPC))
}

// newDNS builds the server's mesh DNS, fed by the local replica's watch.
func (s *Server) newDNS() (*dns.Server, error) {
	acl, err := s.cfg.dnsAllowRecursionFrom()
	if err != nil {
		return nil, err
	}
	return dns.New(dns.Config{
		Addr: s.cfg.DNSAddr, PacketConn: s.cfg.DNSPacketConn, Listener: s.cfg.DNSListener,
		Domain: s.cfg.DNSDomain, Site: s.id.node.Site, TTL: s.cfg.DNSTTL, Upstreams: s.cfg.DNSUpstreams, PeerOrder: s.cfg.DNSPeerOrder,
		AllowRecursionFrom: acl, Logger: s.log, Registerer: s.cfg.Registerer, AcceptMetrics: s.accepts,
		Watch: func(ctx context.Context, from uint64) (dns.Watcher, error) { return s.store.Subscribe(from), nil },
	})
}
