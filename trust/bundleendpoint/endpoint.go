// Package bundleendpoint serves a trust domain's SPIFFE bundle (a JWKS with
// spiffe_sequence and spiffe_refresh_hint) over HTTPS, per the SPIFFE
// Federation specification, under either profile:
//
//   - https_spiffe: the endpoint presents an X.509-SVID; clients verify it
//     against the trust domain's bundle and the endpoint's SPIFFE ID
//     (Strait uses spiffe://<td>/strait/bundle-endpoint on every server);
//   - https_web: the endpoint presents an operator-supplied Web PKI
//     certificate.
//
// The serving itself is go-spiffe's federation handler. Anyone may fetch
// the bundle, so what a client can make the endpoint hold is bounded:
// request headers must arrive within ReadHeaderTimeout and fit in
// MaxHeaderBytes, a whole request within ReadTimeout, an answer leave within
// WriteTimeout, an idle keep-alive connection is closed after IdleTimeout,
// and at most MaxConnections are open (MaxConnectionsPerSource from one
// address); temporary accept errors are retried (internal/acceptloop).
// Run owns one goroutine (the HTTP server) until its context ends.
package bundleendpoint

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/internal/acceptloop"
)

// Path is where the bundle is served.
const Path = "/"

// Bounds on a client's connection (see the package doc).
const (
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 15 * time.Second
	WriteTimeout      = 15 * time.Second
	// DefaultIdleTimeout is Config.IdleTimeout's default.
	DefaultIdleTimeout = time.Minute
	// MaxHeaderBytes: a GET needs little.
	MaxHeaderBytes = 16 << 10
	// MaxConnections open at once, MaxConnectionsPerSource of them from
	// one address: more are closed at accept (peers fetch every few
	// minutes, on one connection each).
	MaxConnections          = 1024
	MaxConnectionsPerSource = 32
)

// Config configures an Endpoint.
type Config struct {
	// Listener is the bound TCP listener. Required.
	Listener net.Listener
	// TrustDomain whose bundle is served. Required.
	TrustDomain spiffeid.TrustDomain
	// Source provides the current bundle. Required.
	Source spiffebundle.Source
	// GetCertificate returns the certificate to present: an SVID for
	// https_spiffe or a Web PKI certificate for https_web. Required.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// IdleTimeout closes a keep-alive connection idle this long;
	// DefaultIdleTimeout when zero.
	IdleTimeout time.Duration
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// AcceptMetrics counts accept retries; not counted when nil.
	AcceptMetrics *acceptloop.Metrics
}

// Endpoint is a bundle endpoint server.
type Endpoint struct {
	cfg Config
	srv *http.Server
}

// New builds an endpoint.
func New(cfg Config) (*Endpoint, error) {
	if cfg.Listener == nil || cfg.TrustDomain.IsZero() || cfg.Source == nil || cfg.GetCertificate == nil {
		return nil, errors.New("bundleendpoint: Listener, TrustDomain, Source and GetCertificate are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	h, err := federation.NewHandler(cfg.TrustDomain, cfg.Source)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	return &Endpoint{cfg: cfg, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cfg.GetCertificate},
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}}, nil
}

// Run serves until ctx ends.
func (e *Endpoint) Run(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		e.srv.Shutdown(sctx)
	}()
	ln := acceptloop.Wrap(e.cfg.Listener, acceptloop.Config{Name: "bundle", Logger: e.cfg.Logger, Metrics: e.cfg.AcceptMetrics,
		Limits: acceptloop.NewLimiter(MaxConnections, MaxConnectionsPerSource)})
	if err := e.srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
