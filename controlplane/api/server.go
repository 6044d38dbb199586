package api

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// Config configures the API. Each service gets the small interface it
// needs (see node.go); all are required.
type Config struct {
	// Store is the local replica of the state. Required.
	Store *state.Store
	// Raft is the Raft node. Required.
	Raft Raft
	// Catalog records heartbeats (the Catalog and Gateway services).
	Catalog  Catalog
	Operator Operator
	Cluster  Cluster
	Bundles  Bundles
	// Authority is the site authority: SVID and JWT signing, the CA
	// (Identity, Workload, ACL, Operator and Gateway services). Required.
	Authority Authority
	// Peering is the site's peering component. Required.
	Peering Peering
	// TrustDomain returns the site's trust domain. Required.
	TrustDomain func() spiffeid.TrustDomain
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Registerer for API metrics; none when nil.
	Registerer prometheus.Registerer
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// SignRatePerCaller caps the SVID signatures per second one agent or
	// gateway may ask this server for (bursts of MaxSignBatch); no cap
	// of its own when zero (the node's signing rate still applies).
	SignRatePerCaller int
	// IdleTimeout closes a connection on which no call has been in
	// progress for this long (a client reconnects when it needs to);
	// DefaultIdleTimeout when zero.
	IdleTimeout time.Duration
	// PrefaceTimeout bounds the wait for a new connection's HTTP/2
	// preface, after TLS; DefaultPrefaceTimeout when zero.
	PrefaceTimeout time.Duration
}

// Connection bounds of the gRPC server (see ServerOptions).
const (
	DefaultIdleTimeout    = 5 * time.Minute
	DefaultPrefaceTimeout = 10 * time.Second
	// KeepaliveTime: the server pings a connection silent this long,
	// and closes it when no answer comes within KeepaliveTimeout: a
	// half-open connection (a peer that vanished) is gone in 80s. The
	// pings also keep a healthy connection through a gateway's
	// passthrough from looking idle there.
	KeepaliveTime    = time.Minute
	KeepaliveTimeout = 20 * time.Second
	// MinClientPing is the shortest interval between a client's pings the
	// server tolerates; a client pinging more often is disconnected.
	MinClientPing = 10 * time.Second
)

// Server is what the gRPC services share: configuration, metrics, the
// interceptors (authentication and authorization of every call, and the
// one conversion of errors to status codes), forwarding to the leader,
// and the bounds on signing and diagnostics. Each service is served by
// a handler type of its own that embeds it (catalogService,
// aclService, ...); the Workload and Identity services are still served
// by Server itself (identity.go).
type Server struct {
	apipb.UnimplementedWorkloadServer
	apipb.UnimplementedIdentityServer

	cfg      Config
	requests *prometheus.CounterVec
	// exportMu serializes read-modify-write of exports on the leader, so
	// two concurrent exports of one service cannot lose each other's peers.
	exportMu  sync.Mutex
	latency   *prometheus.HistogramVec
	diag      *diagLimit
	signShare *signShare
}

// New returns the API server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.PrefaceTimeout == 0 {
		cfg.PrefaceTimeout = DefaultPrefaceTimeout
	}
	s := &Server{
		cfg: cfg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strait_api_requests_total", Help: "API calls by method and gRPC code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "strait_api_request_duration_seconds", Help: "API unary call latency by method.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}, []string{"method"}),
		diag:      newDiagLimit(),
		signShare: newSignShare(cfg.SignRatePerCaller, cfg.Now),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.requests, s.latency, s.diag.refused, s.signShare.refused)
	}
	return s
}

// ServerOptions are the options every gRPC server of the API needs: the
// message size limit, the interceptors, and the bounds on connections
// (preface timeout, idle timeout, keepalive and its enforcement).
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.ConnectionTimeout(s.cfg.PrefaceTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: s.cfg.IdleTimeout,
			Time:              KeepaliveTime,
			Timeout:           KeepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: MinClientPing, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	}
}

// RegisterServices adds the services to g.
func (s *Server) RegisterServices(g *grpc.Server) {
	apipb.RegisterCatalogServer(g, catalogService{Server: s, node: s.cfg.Catalog})
	apipb.RegisterACLServer(g, aclService{Server: s})
	apipb.RegisterOperatorServer(g, operatorService{Server: s, node: s.cfg.Operator})
	apipb.RegisterClusterServer(g, clusterService{Server: s, node: s.cfg.Cluster})
	apipb.RegisterWorkloadServer(g, s)
	apipb.RegisterIdentityServer(g, s)
	apipb.RegisterBundleServer(g, bundleService{Server: s, node: s.cfg.Bundles})
	apipb.RegisterFederationServer(g, federationService{Server: s})
	apipb.RegisterIntentionsServer(g, intentionService{Server: s})
	apipb.RegisterGatewayServer(g, gatewayService{Server: s, node: s.cfg.Catalog})
}

// apply commits a command on the leader, forwarding is the caller's job.
func (s *Server) apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error) {
	return s.cfg.Raft.Apply(ctx, cmd)
}

// store is the local replica.
func (s *Server) store() *state.Store { return s.cfg.Store }

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	ctx, err := s.authenticate(ctx, info.FullMethod)
	var resp any
	if err == nil {
		resp, err = h(ctx, req)
	}
	err = toStatus(err)
	s.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	s.latency.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	return resp, err
}

type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a authedStream) Context() context.Context { return a.ctx }

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	ctx, err := s.authenticate(ss.Context(), info.FullMethod)
	if err == nil {
		err = h(srv, authedStream{ss, ctx})
	}
	err = toStatus(err)
	s.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return err
}
