// Package workloadapi serves the SPIFFE Workload API (X.509 part) on a unix
// socket, per the SPIFFE Workload Endpoint and Workload API specifications:
// every call must carry the "workload.spiffe.io: true" header
// (InvalidArgument otherwise), callers are identified by the socket's peer
// credentials (uid, gid, pid and the executable behind the pid), a caller
// entitled to nothing gets PermissionDenied, and streams send the complete
// current state again whenever it changes.
//
// The server holds no identities itself: a Source (the agent) decides what a
// caller is entitled to. Goroutines: Run serves until its context ends; each
// stream runs in its gRPC handler goroutine and waits on the Source's
// change channel. Imported by agent.
package workloadapi

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Identity is one X.509-SVID a caller may receive.
type Identity struct {
	ID    spiffeid.ID
	Chain []*x509.Certificate
	Key   crypto.Signer
}

// Source decides what callers get.
type Source interface {
	// Identities returns the SVIDs ready for caller. entitled is false
	// when no registration matches the caller at all.
	Identities(c Caller) (ids []Identity, entitled bool)
	// Bundles returns the local trust domain's bundle and those of
	// federated trust domains, each kept separate.
	Bundles() (local *x509bundle.Bundle, federated []*x509bundle.Bundle)
	// Changed returns a channel closed at the next change of identities
	// or bundles.
	Changed() <-chan struct{}
	JWTSource
}

// Config configures a Server.
type Config struct {
	// SocketPath is the unix socket to serve on. Required. A stale socket
	// file is replaced; the socket is made connectable by every user
	// (workloads of any uid call it; the peer credentials say who they are).
	SocketPath string
	// Source provides identities. Required.
	Source Source
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Registerer receives the request counter; none when nil.
	Registerer prometheus.Registerer
}

// Server is a Workload API endpoint.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	cfg      Config
	ln       net.Listener
	requests *prometheus.CounterVec
}

// New binds the socket.
func New(cfg Config) (*Server, error) {
	if cfg.SocketPath == "" || cfg.Source == nil {
		return nil, errors.New("workloadapi: SocketPath and Source are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Dir(cfg.SocketPath), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(cfg.SocketPath); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("workloadapi: %s exists and is not a socket", cfg.SocketPath)
		}
		os.Remove(cfg.SocketPath)
	}
	ln, err := net.Listen("unix", cfg.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: %w", err)
	}
	if err := os.Chmod(cfg.SocketPath, 0o777); err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{cfg: cfg, ln: ln, requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "strait_workloadapi_requests_total", Help: "Workload API calls by method and gRPC code.",
	}, []string{"method", "code"})}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.requests)
	}
	return s, nil
}

func (s *Server) count(method string, err error) {
	s.requests.WithLabelValues(method, status.Code(err).String()).Inc()
}

func (s *Server) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	s.count(path.Base(info.FullMethod), err)
	return resp, err
}

func (s *Server) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	err := h(srv, ss)
	s.count(path.Base(info.FullMethod), err)
	return err
}

// Close releases the socket of a server that will not Run.
func (s *Server) Close() error {
	err := s.ln.Close()
	os.Remove(s.cfg.SocketPath)
	return err
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	g := grpc.NewServer(grpc.Creds(peerCreds{}), grpc.ChainUnaryInterceptor(s.unary), grpc.ChainStreamInterceptor(s.stream))
	workload.RegisterSpiffeWorkloadAPIServer(g, s)
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	err := g.Serve(s.ln)
	os.Remove(s.cfg.SocketPath)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// caller checks the security header and returns the attested caller.
func caller(ctx context.Context) (Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return Caller{}, status.Error(codes.InvalidArgument, "security header missing from request")
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Caller{}, status.Error(codes.Internal, "no peer")
	}
	c, ok := p.AuthInfo.(Caller)
	if !ok {
		return Caller{}, status.Error(codes.Internal, "peer was not attested")
	}
	return c, nil
}

var errNotEntitled = status.Error(codes.PermissionDenied, "no identity issued: no workload registration matches this process")

func concat(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

func federatedMap(fed []*x509bundle.Bundle) map[string][]byte {
	if len(fed) == 0 {
		return nil
	}
	m := make(map[string][]byte, len(fed))
	for _, b := range fed {
		m[b.TrustDomain().IDString()] = concat(b.X509Authorities())
	}
	return m
}

// FetchX509SVID streams the caller's SVIDs, again on every change.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	c, err := caller(stream.Context())
	if err != nil {
		return err
	}
	src := s.cfg.Source
	for {
		changed := src.Changed()
		ids, entitled := src.Identities(c)
		if !entitled {
			return errNotEntitled
		}
		if len(ids) > 0 {
			resp, err := x509Response(ids, src)
			if err != nil {
				return status.Error(codes.Internal, err.Error())
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

func x509Response(ids []Identity, src Source) (*workload.X509SVIDResponse, error) {
	local, fed := src.Bundles()
	resp := &workload.X509SVIDResponse{FederatedBundles: federatedMap(fed)}
	for _, id := range ids {
		key, err := x509.MarshalPKCS8PrivateKey(id.Key)
		if err != nil {
			return nil, err
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    id.ID.String(),
			X509Svid:    concat(id.Chain),
			X509SvidKey: key,
			Bundle:      concat(local.X509Authorities()),
		})
	}
	return resp, nil
}

// FetchX509Bundles streams the trust bundles, again on every change.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	c, err := caller(stream.Context())
	if err != nil {
		return err
	}
	src := s.cfg.Source
	for {
		changed := src.Changed()
		if _, entitled := src.Identities(c); !entitled {
			return errNotEntitled
		}
		local, fed := src.Bundles()
		bundles := federatedMap(fed)
		if bundles == nil {
			bundles = map[string][]byte{}
		}
		bundles[local.TrustDomain().IDString()] = concat(local.X509Authorities())
		if err := stream.Send(&workload.X509BundlesResponse{Bundles: bundles}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}
