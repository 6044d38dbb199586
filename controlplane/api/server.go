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
)

// Config configures the API.
type Config struct {
	// Node is the Raft node. Required.
	Node Node
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

// Server implements the gRPC services.
type Server struct {
	apipb.UnimplementedCatalogServer
	apipb.UnimplementedACLServer
	apipb.UnimplementedOperatorServer
	apipb.UnimplementedClusterServer
	apipb.UnimplementedWorkloadServer
	apipb.UnimplementedIdentityServer
	apipb.UnimplementedBundleServer

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
	apipb.RegisterCatalogServer(g, s)
	apipb.RegisterACLServer(g, s)
	apipb.RegisterOperatorServer(g, s)
	apipb.RegisterClusterServer(g, s)
	apipb.RegisterWorkloadServer(g, s)
	apipb.RegisterIdentityServer(g, s)
	apipb.RegisterBundleServer(g, s)
	apipb.RegisterFederationServer(g, federationService{Server: s})
	apipb.RegisterIntentionsServer(g, intentionService{Server: s})
	apipb.RegisterGatewayServer(g, gatewayService{Server: s})
}

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
