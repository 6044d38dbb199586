package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/straitmesh/strait/internal/acceptloop/acceptlooptest"
)

// TestEgressAcceptSurvivesEMFILE: an egress listener failing with EMFILE
// three times (descriptors exhausted: a fault a shared test process
// cannot cause for real; internal/acceptloop's TestRealFDExhaustion does,
// in a child process) keeps accepting: the next client is served (here,
// told its listener is gone: the configuration has none). Before, the
// listener's accept loop ended at the first error and clients hung.
func TestEgressAcceptSurvivesEMFILE(t *testing.T) {
	g, err := New(Config{Name: "gw", Servers: []string{"127.0.0.1:1"}, DataDir: t.TempDir(), WANAddr: "127.0.0.1:0",
		Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	g.cur = &config{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	flaky := acceptlooptest.Failing(ln, 3, syscall.EMFILE)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.serveEgress(ctx, flaky, "gone"); close(done) }()
	t.Cleanup(func() { cancel(); ln.Close(); <-done })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the client was never served after the accept errors")
	}
	if n := flaky.Failed.Load(); n != 3 {
		t.Fatalf("%d accept failures, want 3", n)
	}
}
