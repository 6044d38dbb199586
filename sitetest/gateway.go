// Package sitetest joins real gateways and agents to a test site
// (controlplanetest), for the tests of the gateway, of the agent and of
// what talks to them. Only tests import it. It lives outside gateway/ and
// trust/ because it links the servers, which those packages must not.
//
// Start functions are called from the test's goroutine; each node they
// start runs in its own goroutines until it is stopped or the test ends.
package sitetest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
)

// Gateway is a gateway running until Stop or the end of its test.
type Gateway struct {
	*gateway.Gateway
	// Config is what it was started with, defaults filled in.
	Config gateway.Config
	// Done receives what Run returned, once.
	Done chan error
	// Stop stops the gateway and waits for Run to return; it is safe to
	// call more than once, and the end of the test calls it.
	Stop func()
}

// StartGateway joins a gateway to c with a new one-use gateway token, runs it
// and waits (up to 20s) until it accepts connections. Zero fields of cfg
// get: Servers the address of c's first server, DataDir a temporary
// directory, and, when neither WANAddr nor WANListener is set, a
// WANListener on 127.0.0.1 port 0.
func StartGateway(t testing.TB, c *controlplanetest.Cluster, cfg gateway.Config) *Gateway {
	t.Helper()
	tok, err := c.Client(0).ACL.CreateToken(controlplanetest.Ctx(t), &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_GATEWAY, MaxUses: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg.JoinToken = tok.Secret
	if cfg.Servers == nil {
		cfg.Servers = []string{c.Nodes[0].Addr}
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.WANAddr == "" && cfg.WANListener == nil {
		if cfg.WANListener, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gateway{Gateway: gw, Config: cfg, Done: make(chan error, 1)}
	stopped := make(chan struct{})
	go func() { g.Done <- gw.Run(ctx); close(stopped) }()
	g.Stop = func() { cancel(); <-stopped }
	t.Cleanup(g.Stop)
	select {
	case <-gw.Ready():
	case err := <-g.Done:
		t.Fatalf("gateway exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("gateway not ready within 20s")
	}
	return g
}
