package xds_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/xds"
)

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestNotReadyIsNotAnError: while the state is not there yet (a server
// starting), the server waits for it without logging an error; any other
// failure to build is still an error.
func TestNotReadyIsNotAnError(t *testing.T) {
	var logs logBuffer
	var mu sync.Mutex
	inputsErr := fmt.Errorf("site not bootstrapped yet: %w", xds.ErrNotReady)
	changed := make(chan struct{})
	s := xds.New(xds.Config{
		Inputs: func() (xds.Inputs, error) { mu.Lock(); defer mu.Unlock(); return xds.Inputs{}, inputsErr },
		Changed: func() []<-chan struct{} {
			mu.Lock()
			defer mu.Unlock()
			return []<-chan struct{}{changed}
		},
		Caller:     func(context.Context) (xds.Subscriber, bool) { return xds.Subscriber{}, false },
		Logger:     slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: prometheus.NewRegistry(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitLog := func(want string) {
		t.Helper()
		controlplanetest.WaitFor(t, 10*time.Second, func() error {
			if !strings.Contains(logs.String(), want) {
				return fmt.Errorf("no %q in the log:\n%s", want, logs.String())
			}
			return nil
		})
	}
	waitLog("level=DEBUG msg=\"xds: snapshot not built yet; waiting for the site's state\"")
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("not ready logged an error:\n%s", logs.String())
	}
	// A real failure is an error.
	mu.Lock()
	inputsErr = errors.New("bundle unreadable")
	close(changed)
	changed = make(chan struct{})
	mu.Unlock()
	waitLog("level=ERROR msg=\"xds: snapshot not built; gateways keep the previous one\" err=\"bundle unreadable\"")
}
