// Package metricsserver serves Prometheus /metrics over HTTP until a
// context ends: the one metrics endpoint of servers, agents and gateways.
// Besides the process's own metrics it always serves the Go runtime's
// (go_goroutines, go_memstats_*, ...) and the process's (process_open_fds,
// process_resident_memory_bytes, ...), so that growth under load is
// visible from the endpoint itself.
//
// A scraper's connection is bounded (header and idle timeouts, header
// size, connections in all and per address), and temporary accept errors
// are retried (internal/acceptloop).
// Serve owns the HTTP server's goroutines until its context ends.
package metricsserver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/straitmesh/strait/internal/acceptloop"
)

// Bounds on a scraper's connection.
const (
	ReadHeaderTimeout = 10 * time.Second
	// WriteTimeout leaves a large scrape time to finish.
	WriteTimeout   = 30 * time.Second
	IdleTimeout    = 2 * time.Minute
	MaxHeaderBytes = 16 << 10
	// MaxConnections open at once, MaxConnectionsPerSource from one
	// address (scrapers are few).
	MaxConnections          = 64
	MaxConnectionsPerSource = 16
)

// Serve listens on addr and serves g's metrics at /metrics until ctx
// ends, then shuts down (waiting up to 2s for scrapes in flight).
func Serve(ctx context.Context, addr string, g prometheus.Gatherer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ServeListener(ctx, ln, g, slog.Default())
}

// ServeListener is Serve on a bound listener, which it closes; log
// receives the accept loop's warnings.
func ServeListener(ctx context.Context, ln net.Listener, g prometheus.Gatherer, log *slog.Logger) error {
	// The runtime and process collectors, and the accept loop's retries,
	// live in a registry of this endpoint's own, merged with g's.
	own := prometheus.NewRegistry()
	own.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	am := acceptloop.NewMetrics(own)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{g, own}, promhttp.HandlerOpts{}))
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: ReadHeaderTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	wl := acceptloop.Wrap(ln, acceptloop.Config{Name: "metrics", Logger: log, Metrics: am,
		Limits: acceptloop.NewLimiter(MaxConnections, MaxConnectionsPerSource)})
	if err := hs.Serve(wl); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
