// Package controlplanetest starts real control-plane servers for tests: each
// a real Raft node with mTLS on a loopback port, its own data directory, and
// fast Raft timeouts. Helpers take testing.TB and clean up after themselves.
package controlplanetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/dns"
)

// FastRaft are Raft timeouts for loopback tests: elections in well under a second.
var FastRaft = controlplane.RaftTimeouts{
	Heartbeat:     300 * time.Millisecond,
	Election:      300 * time.Millisecond,
	LeaderLease:   150 * time.Millisecond,
	CommitTimeout: 5 * time.Millisecond,
}

// Options adjust a cluster.
type Options struct {
	// Site name; "test" when empty.
	Site string
	// WrapTransport wraps each server's Raft transport (fault injection).
	WrapTransport func(node string, t raft.Transport) raft.Transport
	// InMemoryRaft keeps Raft logs in memory (faster; no restart from disk).
	InMemoryRaft bool
	// Logs shows server logs (otherwise only with STRAIT_TEST_LOGS=1).
	Logs bool
	// Raft, when set, replaces FastRaft (zero fields: production defaults).
	Raft *controlplane.RaftTimeouts
	// Registry, when set, receives every server's metrics (one server per
	// registry: use it with single-server clusters).
	Registry *prometheus.Registry
	// LeaveOnTerminate is set on every server.
	LeaveOnTerminate bool
	// BundleEndpoint serves each server's SPIFFE bundle endpoint on a
	// loopback port (Node.BundleAddr); with BundleWebCertFile and
	// BundleWebKeyFile, under the https_web profile.
	BundleEndpoint                      bool
	BundleWebCertFile, BundleWebKeyFile string
	// DNS serves mesh DNS on each server on a loopback port (Node.DNSAddr).
	DNS bool
	// Tweak, when set, adjusts every server's config last.
	Tweak func(*controlplane.Config)
	// Clock, when set, is the servers' clock (token and certificate
	// expiry); Raft keeps real time.
	Clock *Clock
}

// Clock is an adjustable clock: real time plus an offset.
type Clock struct {
	mu     sync.Mutex
	offset time.Duration
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// Cluster is a running site.
type Cluster struct {
	t     testing.TB
	opts  Options
	Nodes []*Node
	// Token is the management token.
	Token string
}

// Node is one server of a cluster.
type Node struct {
	c      *Cluster
	ID     string
	Dir    string
	Addr   string
	Server *controlplane.Server
	// BundleAddr is the bundle endpoint's address, with Options.BundleEndpoint.
	BundleAddr string
	// DNSAddr is the mesh DNS address (UDP and TCP), with Options.DNS.
	DNSAddr string
	cancel  context.CancelFunc
	done    chan error
	mu      sync.Mutex
}

// Start starts an n-server site: the first bootstraps, the others join with
// server tokens, and Start returns once all are voters.
func Start(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	if opts.Site == "" {
		opts.Site = "test"
	}
	c := &Cluster{t: t, opts: opts}
	tokens := make(chan string, 1)
	first := c.newNode("s0")
	first.start(controlplane.Config{Bootstrap: true, OnBootstrap: func(tok string) { tokens <- tok }})
	select {
	case c.Token = <-tokens:
	case err := <-first.done:
		t.Fatalf("bootstrap server exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("bootstrap server did not bootstrap within 30s")
	}
	for i := 1; i < n; i++ {
		c.AddServer(fmt.Sprintf("s%d", i))
	}
	c.WaitVoters(n)
	return c
}

func (c *Cluster) newNode(id string) *Node {
	n := &Node{c: c, ID: id, Dir: c.t.TempDir()}
	c.Nodes = append(c.Nodes, n)
	return n
}

// AddServer starts a new server that joins the site with a fresh server token.
func (c *Cluster) AddServer(id string) *Node {
	c.t.Helper()
	n := c.newNode(id)
	n.start(controlplane.Config{Join: c.joinAddrs(n), JoinToken: c.ServerToken()})
	return n
}

// NewServerConfig returns the config of a server that would join the
// cluster, for tests that run it themselves.
func (c *Cluster) NewServerConfig(id, token string) (controlplane.Config, func() error) {
	n := c.newNode(id)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	c.Nodes = c.Nodes[:len(c.Nodes)-1]
	cfg := controlplane.Config{
		Site: c.opts.Site, NodeID: id, DataDir: n.Dir, Listener: ln, Raft: FastRaft,
		Logger: c.logger(id), Join: c.joinAddrs(n), JoinToken: token, InMemoryRaft: true,
	}
	return cfg, ln.Close
}

func (c *Cluster) joinAddrs(skip *Node) []string {
	var join []string
	for _, o := range c.Nodes {
		if o != skip && o.Running() {
			join = append(join, o.Addr)
		}
	}
	return join
}

// ServerToken creates a server join token.
func (c *Cluster) ServerToken() string {
	c.t.Helper()
	cl := c.Client(c.Leader())
	var tok string
	WaitFor(c.t, 20*time.Second, func() error {
		resp, err := cl.ACL.CreateToken(ctx(c.t), &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_SERVER, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			return err
		}
		tok = resp.Secret
		return nil
	})
	return tok
}

func (c *Cluster) logger(id string) *slog.Logger {
	if c.opts.Logs || os.Getenv("STRAIT_TEST_LOGS") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test_node", id)
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// start runs the node's server with cfg's role fields.
func (n *Node) start(role controlplane.Config) {
	t := n.c.t
	t.Helper()
	addr := n.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	// A restarted node reuses its address, which may linger briefly.
	WaitFor(t, 10*time.Second, func() error {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	n.Addr = ln.Addr().String()
	cfg := role
	cfg.Site = n.c.opts.Site
	cfg.NodeID = n.ID
	cfg.DataDir = n.Dir
	cfg.Listener = ln
	cfg.Raft = FastRaft
	if n.c.opts.Raft != nil {
		cfg.Raft = *n.c.opts.Raft
	}
	cfg.InMemoryRaft = n.c.opts.InMemoryRaft
	cfg.Logger = n.c.logger(n.ID)
	cfg.LeaveOnTerminate = n.c.opts.LeaveOnTerminate
	if n.c.opts.BundleEndpoint {
		bl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		n.BundleAddr = bl.Addr().String()
		cfg.BundleListener = bl
		cfg.BundleWebCertFile, cfg.BundleWebKeyFile = n.c.opts.BundleWebCertFile, n.c.opts.BundleWebKeyFile
	}
	if r := n.c.opts.Registry; r != nil {
		cfg.Registerer, cfg.Gatherer = r, r
	}
	if n.c.opts.Clock != nil {
		cfg.Now = n.c.opts.Clock.Now
	}
	if w := n.c.opts.WrapTransport; w != nil {
		id := n.ID
		cfg.WrapTransport = func(tr raft.Transport) raft.Transport { return w(id, tr) }
	}
	if n.c.opts.DNS {
		pc, dl, err := dns.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		n.DNSAddr, cfg.DNSPacketConn, cfg.DNSListener = pc.LocalAddr().String(), pc, dl
	}
	if n.c.opts.Tweak != nil {
		n.c.opts.Tweak(&cfg)
	}
	s, err := controlplane.New(cfg)
	if err != nil {
		t.Fatalf("new server %s: %v", n.ID, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	n.mu.Lock()
	n.Server, n.cancel, n.done = s, cancel, done
	n.mu.Unlock()
	t.Cleanup(func() { n.Stop() })
	select {
	case <-s.Started():
	case err := <-done:
		done <- err
		t.Fatalf("server %s exited while starting: %v", n.ID, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("server %s did not start within 30s", n.ID)
	}
}

// Running reports whether the node's server runs.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cancel != nil
}

// Stop stops the node's server (a crash as far as the others can tell:
// no leave). It returns Run's error.
func (n *Node) Stop() error {
	n.mu.Lock()
	cancel, done := n.cancel, n.done
	n.cancel = nil
	n.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		n.c.t.Errorf("server %s did not stop within 30s", n.ID)
		return errors.New("stop timeout")
	}
}

// Restart starts a stopped node again from its data directory, on its address.
func (n *Node) Restart() {
	n.c.t.Helper()
	n.start(controlplane.Config{})
}

// Rebuild stops the node and bootstraps a new site of the same name on its
// address, from an empty data directory: the site torn down and built again,
// with a new CA. The cluster's Token becomes the new site's.
func (n *Node) Rebuild() {
	n.c.t.Helper()
	n.Stop()
	n.Dir = n.c.t.TempDir()
	tokens := make(chan string, 1)
	n.start(controlplane.Config{Bootstrap: true, OnBootstrap: func(tok string) { tokens <- tok }})
	select {
	case n.c.Token = <-tokens:
	case <-time.After(30 * time.Second):
		n.c.t.Fatal("rebuilt server did not bootstrap within 30s")
	}
}

// Client returns a management client connected to node i.
func (c *Cluster) Client(i int) *apiclient.Client {
	return c.ClientWithToken(i, c.Token)
}

// ClientWithToken returns a client of node i that sends token.
func (c *Cluster) ClientWithToken(i int, token string) *apiclient.Client {
	c.t.Helper()
	n := c.Nodes[i]
	cl, err := apiclient.Dial(apiclient.Config{Addr: n.Addr, Token: token, CAFile: controlplane.CAFile(n.Dir)})
	if err != nil {
		c.t.Fatalf("dial %s: %v", n.ID, err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// Leader returns the index of the current leader among running nodes, waiting for one.
func (c *Cluster) Leader() int {
	c.t.Helper()
	idx := -1
	WaitFor(c.t, 20*time.Second, func() error {
		for i, n := range c.Nodes {
			if n.Running() && n.Server.IsLeader() {
				idx = i
				return nil
			}
		}
		return errors.New("no leader")
	})
	return idx
}

// Follower returns the index of a running non-leader.
func (c *Cluster) Follower() int {
	c.t.Helper()
	l := c.Leader()
	for i, n := range c.Nodes {
		if i != l && n.Running() {
			return i
		}
	}
	c.t.Fatal("no running follower")
	return -1
}

// WaitVoters waits until the leader's configuration has n voters and every
// running node has applied the leader's index.
func (c *Cluster) WaitVoters(n int) {
	c.t.Helper()
	WaitFor(c.t, 30*time.Second, func() error {
		l := c.Nodes[c.Leader()]
		peers, err := l.Server.Peers()
		if err != nil {
			return err
		}
		var voters []string
		for _, p := range peers {
			if p.Voter {
				voters = append(voters, p.Id)
			}
		}
		if len(voters) != n {
			return fmt.Errorf("voters %s, want %d", strings.Join(voters, ","), n)
		}
		return nil
	})
	c.WaitConverged()
}

// WaitConverged waits until every running node has applied the leader's
// last index.
func (c *Cluster) WaitConverged() {
	c.t.Helper()
	WaitFor(c.t, 30*time.Second, func() error {
		l := c.Nodes[c.Leader()].Server.Store().Index()
		for _, n := range c.Nodes {
			if n.Running() && n.Server.Store().Index() < l {
				return fmt.Errorf("%s applied %d < leader %d", n.ID, n.Server.Store().Index(), l)
			}
		}
		return nil
	})
}

// WaitFor polls cond until it returns nil, failing the test with cond's
// last error after timeout.
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	delay := 5 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(delay)
		delay = min(2*delay, 200*time.Millisecond)
	}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// Ctx returns a context that ends with the test (or after 30s).
func Ctx(t testing.TB) context.Context { return ctx(t) }
