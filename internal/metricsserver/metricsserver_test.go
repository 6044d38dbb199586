package metricsserver_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/straitmesh/strait/internal/metricsserver"
)

// TestServesRuntimeAndProcessMetrics: /metrics carries the Go runtime's
// and the process's metrics besides the registry's own, so goroutine,
// memory and descriptor growth is visible on every process's endpoint.
func TestServesRuntimeAndProcessMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "strait_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- metricsserver.ServeListener(ctx, ln, reg, slog.Default()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	for _, name := range []string{"go_goroutines ", "process_open_fds ", "process_resident_memory_bytes ", "strait_test_total 1"} {
		if !strings.Contains(string(b), "\n"+name) {
			t.Errorf("/metrics has no %q", name)
		}
	}
}
