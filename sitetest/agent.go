package sitetest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/straitmesh/strait/agent"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// Agent is an agent running until its test ends.
type Agent struct {
	*agent.Agent
	// Config is what it was started with, defaults filled in.
	Config agent.Config
	exited chan struct{}
	err    error
}

// StartAgent joins an agent to c with a new agent token and runs it until the
// test ends. Zero fields of cfg get: Node "node1", Servers the address of
// c's first server, DataDir a temporary directory, SocketPath a short
// temporary path (a unix socket path is at most 108 bytes, more than a
// test's TempDir may leave), CheckInterval 50ms. When the test ends, an
// error from Run fails it unless it is one of allowed (errors.Is).
func StartAgent(t testing.TB, c *controlplanetest.Cluster, cfg agent.Config, allowed ...error) *Agent {
	t.Helper()
	tok, err := c.Client(0).ACL.CreateToken(controlplanetest.Ctx(t), &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_AGENT})
	if err != nil {
		t.Fatal(err)
	}
	cfg.JoinToken = tok.Secret
	if cfg.Node == "" {
		cfg.Node = "node1"
	}
	if cfg.Servers == nil {
		cfg.Servers = []string{c.Nodes[0].Addr}
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.SocketPath == "" {
		dir, err := os.MkdirTemp("", "sa")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		cfg.SocketPath = filepath.Join(dir, "agent.sock")
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = 50 * time.Millisecond
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ag := &Agent{Agent: a, Config: cfg, exited: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { ag.err = a.Run(ctx); close(ag.exited) }()
	t.Cleanup(func() {
		cancel()
		<-ag.exited
		if ag.err == nil {
			return
		}
		for _, ok := range allowed {
			if errors.Is(ag.err, ok) {
				return
			}
		}
		t.Errorf("agent: %v", ag.err)
	})
	return ag
}

// Exited is closed once the agent's Run has returned.
func (a *Agent) Exited() <-chan struct{} { return a.exited }

// Err is what the agent's Run returned, once Exited is closed.
func (a *Agent) Err() error {
	<-a.exited
	return a.err
}
