package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/straitmesh/strait/meshname"
)

// GatewayGroup is the snapshot every gateway of the site receives (they
// are interchangeable; their identities come from their own SVIDs).
const GatewayGroup = "gateways"

// Coalesce is how long the server waits after a change for more before
// rebuilding: a burst of changes costs one snapshot.
const Coalesce = 50 * time.Millisecond

// Config configures the xDS server.
type Config struct {
	// Inputs reads the current state.
	Inputs func() (Inputs, error)
	// Changed returns channels that close when the state the inputs come
	// from changes; the server waits on all of them.
	Changed func() []<-chan struct{}
	// Caller returns who a stream's context authenticated: a gateway of
	// the site (its name) or a workload (its SPIFFE ID, for proxyless gRPC).
	Caller     func(ctx context.Context) (Subscriber, bool)
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// ErrNotReady, wrapped in an error from Config.Inputs, says the state is not
// there yet (a server starting, before its site's bootstrap is applied):
// the server waits for the next change without complaint.
var ErrNotReady = errors.New("state not ready")

// Server builds snapshots and serves them over ADS.
type Server struct {
	cfg   Config
	cache cache.SnapshotCache
	ads   serverv3.Server

	mu      sync.Mutex
	streams map[int64]Subscriber
	// sent is the last response per stream and type: its nonce and version.
	sent    map[int64]map[string]sentResponse
	version int

	builds, nacks prometheus.Counter
	buildTime     prometheus.Histogram
	streamsGauge  prometheus.GaugeFunc
}

type sentResponse struct{ nonce, version string }

// Subscriber is an authenticated ADS client: a gateway (Gateway set) or
// a proxyless workload (Workload set).
type Subscriber struct{ Gateway, Workload string }

func (s Subscriber) String() string {
	if s.Gateway != "" {
		return "gateway " + s.Gateway
	}
	return s.Workload
}

// nodeHash maps gateways to the gateway snapshot and every other node
// (proxyless clients, whatever IDs they pick) to the proxyless one.
type nodeHash struct{}

func (nodeHash) ID(n *core.Node) string {
	if strings.HasPrefix(n.GetId(), meshname.GatewayNodePrefix) {
		return GatewayGroup
	}
	return ProxylessGroup
}

// New returns a server; Run keeps its snapshot current.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, streams: make(map[int64]Subscriber), sent: make(map[int64]map[string]sentResponse)}
	s.cache = cache.NewSnapshotCache(false, nodeHash{}, nil)
	s.builds = prometheus.NewCounter(prometheus.CounterOpts{Name: "strait_xds_snapshots_total", Help: "Snapshots built (gateways' and proxyless clients', together)."})
	s.nacks = prometheus.NewCounter(prometheus.CounterOpts{Name: "strait_xds_nacks_total", Help: "Resources a subscriber rejected."})
	s.buildTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "strait_xds_snapshot_build_seconds", Help: "Time to build and validate a snapshot.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 3, 12)})
	s.streamsGauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strait_xds_streams", Help: "Open ADS streams."}, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(len(s.streams))
	})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.builds, s.nacks, s.buildTime, s.streamsGauge)
	}
	s.ads = serverv3.NewServer(context.Background(), s.cache, serverv3.CallbackFuncs{
		StreamOpenFunc: s.onOpen,
		StreamClosedFunc: func(id int64, _ *core.Node) {
			s.mu.Lock()
			delete(s.streams, id)
			delete(s.sent, id)
			s.mu.Unlock()
		},
		StreamRequestFunc:  s.onRequest,
		StreamResponseFunc: s.onResponse,
	})
	return s
}

// Register adds the ADS service to g.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

func (s *Server) onOpen(ctx context.Context, id int64, typeURL string) error {
	sub, ok := s.cfg.Caller(ctx)
	if !ok {
		return errors.New("xds: only this site's gateways and workloads, presenting their SVIDs, may subscribe")
	}
	s.mu.Lock()
	s.streams[id] = sub
	s.mu.Unlock()
	return nil
}

// onRequest holds a gateway to the node ID its SVID names (and keeps
// workloads off gateway node IDs), and logs rejections (once per version:
// the cache resends only on a new one).
func (s *Server) onRequest(id int64, req *discovery.DiscoveryRequest) error {
	s.mu.Lock()
	sub := s.streams[id]
	last := s.sent[id][req.TypeUrl]
	s.mu.Unlock()
	if req.ErrorDetail != nil && req.ResponseNonce == last.nonce {
		// A rejection of the latest response: answer only with a newer
		// version, as if the client held the one it refused (the cache
		// would otherwise resend the same resources at once, and again).
		req.VersionInfo = last.version
	}
	if n := req.GetNode(); n != nil {
		switch gw := strings.HasPrefix(n.Id, meshname.GatewayNodePrefix); {
		case sub.Gateway != "" && n.Id != meshname.GatewayNodePrefix+sub.Gateway:
			return fmt.Errorf("xds: node %q does not match the caller's identity (gateway %q)", n.Id, sub.Gateway)
		case sub.Gateway == "" && gw:
			return fmt.Errorf("xds: node %q names a gateway, but the caller is %s", n.Id, sub.Workload)
		}
	}
	if d := req.ErrorDetail; d != nil {
		s.nacks.Inc()
		s.cfg.Logger.Warn("xds: a subscriber rejected resources", "subscriber", sub.String(), "type", req.TypeUrl, "version", req.VersionInfo, "error", d.Message)
	}
	return nil
}

// onResponse remembers the latest response of each type on each stream.
func (s *Server) onResponse(_ context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.sent[id]
	if m == nil {
		m = map[string]sentResponse{}
		s.sent[id] = m
	}
	m[resp.TypeUrl] = sentResponse{nonce: resp.Nonce, version: resp.VersionInfo}
}

// Run rebuilds the snapshot whenever the state changes, until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	for {
		changed := s.cfg.Changed()
		if err := s.rebuild(ctx); errors.Is(err, ErrNotReady) {
			s.cfg.Logger.Debug("xds: snapshot not built yet; waiting for the site's state", "reason", err)
		} else if err != nil {
			s.cfg.Logger.Error("xds: snapshot not built; gateways keep the previous one", "err", err)
		}
		if err := waitAny(ctx, changed); err != nil {
			return nil
		}
		// Let a burst settle.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(Coalesce):
		}
	}
}

func waitAny(ctx context.Context, chans []<-chan struct{}) error {
	done := make(chan struct{})
	var once sync.Once
	stop := make(chan struct{})
	defer close(stop)
	for _, ch := range chans {
		go func() {
			select {
			case <-ch:
				once.Do(func() { close(done) })
			case <-stop:
			}
		}()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) rebuild(ctx context.Context) error {
	start := time.Now()
	in, err := s.cfg.Inputs()
	if err != nil {
		return err
	}
	gw, err := Build(in)
	if err != nil {
		return err
	}
	pl, err := BuildProxyless(in)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.version++
	v := strconv.Itoa(s.version)
	s.mu.Unlock()
	for group, res := range map[string]Resources{GatewayGroup: gw, ProxylessGroup: pl} {
		snap, err := cache.NewSnapshot(v, res)
		if err != nil {
			return err
		}
		if err := s.cache.SetSnapshot(ctx, group, snap); err != nil {
			return err
		}
	}
	s.builds.Inc()
	s.buildTime.Observe(time.Since(start).Seconds())
	return nil
}
