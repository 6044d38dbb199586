package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/straitmesh/strait/agent"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// syncLog is a log sink safe for concurrent writers.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestJoinTokenIgnoredIsLogged (issue 15): an agent started with a join
// token on a data dir that already holds its identity keeps that identity
// (the token, malformed here, is never used) and says the token is
// ignored.
func TestJoinTokenIgnoredIsLogged(t *testing.T) {
	s := startSite(t)
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		_, err := os.Stat(filepath.Join(s.agentDir, "agent.json"))
		return err
	})
	dir, err := os.MkdirTemp("", "sa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var logs syncLog
	a, err := agent.New(agent.Config{Node: "node1", Servers: []string{s.c.Nodes[0].Addr}, JoinToken: "strait_not-a-token",
		DataDir: s.agentDir, SocketPath: filepath.Join(dir, "again.sock"), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("agent stopped: %v", err)
		default:
		}
		if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "join token ignored") {
			return errors.New("no warning yet")
		}
		return nil
	})
}
