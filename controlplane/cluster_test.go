package controlplane_test

import (
	"crypto"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/trust/ca"
)

func register(t testing.TB, cl *apiclient.Client, svc, id string) uint64 {
	t.Helper()
	resp, err := cl.Catalog.Register(controlplanetest.Ctx(t), &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "payments", Name: svc, Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
		Instance: &apipb.Instance{Id: id, Address: "10.0.0.1", Ports: map[string]uint32{"http": 8080}},
	})
	if err != nil {
		t.Fatalf("register %s/%s: %v", svc, id, err)
	}
	return resp.Index
}

// waitInstance waits until node i's local replica has the instance.
func waitInstance(t testing.TB, c *controlplanetest.Cluster, i int, svc, id string) {
	t.Helper()
	controlplanetest.WaitFor(t, 20e9, func() error {
		if _, ok := c.Nodes[i].Server.Store().Instance(&apipb.InstanceKey{Namespace: "payments", Service: svc, Id: id}); !ok {
			return fmt.Errorf("%s has no %s/%s", c.Nodes[i].ID, svc, id)
		}
		return nil
	})
}

func TestClusterReplicatesWritesFromAnyServer(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{})
	// A write sent to a follower is forwarded to the leader.
	register(t, c.Client(c.Follower()), "api", "a1")
	register(t, c.Client(c.Leader()), "api", "a2")
	for i := range c.Nodes {
		waitInstance(t, c, i, "api", "a1")
		waitInstance(t, c, i, "api", "a2")
	}
	// Local reads on a follower see the replicated state.
	resp, err := c.Client(c.Follower()).Catalog.GetService(controlplanetest.Ctx(t), &apipb.GetServiceRequest{Namespace: "payments", Name: "api"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Instances) != 2 {
		t.Fatalf("follower sees %d instances, want 2", len(resp.Instances))
	}
}

func TestClusterSurvivesLeaderLoss(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{})
	old := c.Leader()
	register(t, c.Client(old), "api", "before")
	if err := c.Nodes[old].Stop(); err != nil {
		t.Fatalf("stop leader: %v", err)
	}
	next := c.Leader()
	if next == old {
		t.Fatal("stopped leader still reported as leader")
	}
	// Writes continue through either survivor.
	for i, n := range c.Nodes {
		if n.Running() {
			register(t, c.Client(i), "api", "after-"+n.ID)
		}
	}
	// The old leader restarts from disk and catches up.
	c.Nodes[old].Restart()
	c.WaitConverged()
	for _, n := range c.Nodes {
		if n.Running() && n != c.Nodes[old] {
			waitInstance(t, c, old, "api", "after-"+n.ID)
		}
	}
	waitInstance(t, c, old, "api", "before")
}

// TestNewLeaderSignsWithTheReplicatedCA: after the bootstrap server is
// gone, another server opens the replicated CA key with its copy of the
// KEK and signs a joining server's SVID.
func TestNewLeaderSignsWithTheReplicatedCA(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{})
	if err := c.Nodes[0].Stop(); err != nil { // s0 bootstrapped the site
		t.Fatal(err)
	}
	if c.Leader() == 0 {
		t.Fatal("stopped bootstrap server still leads")
	}
	n := c.AddServer("s3")
	c.WaitVoters(4)
	register(t, c.Client(len(c.Nodes)-1), "api", "via-s3")
	waitInstance(t, c, len(c.Nodes)-1, "api", "via-s3")
	if !n.Running() {
		t.Fatal("new server not running")
	}
}

func TestGracefulLeave(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{LeaveOnTerminate: true})
	// The leader leaves too: it hands leadership over first.
	l := c.Leader()
	if err := c.Nodes[l].Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		peers, err := c.Nodes[c.Leader()].Server.Peers()
		if err != nil {
			return err
		}
		for _, p := range peers {
			if p.Id == c.Nodes[l].ID {
				return fmt.Errorf("%s still in the configuration", p.Id)
			}
		}
		if len(peers) != 2 {
			return fmt.Errorf("%d peers, want 2", len(peers))
		}
		return nil
	})
	// Two servers remain a working site.
	register(t, c.Client(c.Leader()), "api", "after-leave")
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Registry: reg})
	register(t, c.Client(0), "api", "a1")
	want := map[string]float64{"strait_raft_leader": 1, "strait_catalog_services": 1, "strait_catalog_instances": 1}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		mfs, err := reg.Gather()
		if err != nil {
			return err
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.Metric {
				if g := m.GetGauge(); g != nil {
					got[mf.GetName()] = g.GetValue()
				}
				if c := m.GetCounter(); c != nil && mf.GetName() == "strait_api_requests_total" {
					got[mf.GetName()] += c.GetValue()
				}
			}
		}
		for k, v := range want {
			if got[k] != v {
				return fmt.Errorf("%s = %v, want %v", k, got[k], v)
			}
		}
		if got["strait_api_requests_total"] < 1 {
			return fmt.Errorf("no API requests counted")
		}
		return nil
	})
}

// compactAfterSnapshot makes node i snapshot now and keep just one log
// entry behind the snapshot.
func compactAfterSnapshot(t *testing.T, n *controlplanetest.Node) {
	t.Helper()
	r := n.Server.Raft()
	rc := r.ReloadableConfig()
	rc.TrailingLogs, rc.SnapshotThreshold = 1, 1
	if err := r.ReloadConfig(rc); err != nil {
		t.Fatal(err)
	}
	if err := r.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot on %s: %v", n.ID, err)
	}
}

func waitCount(t *testing.T, n *controlplanetest.Node, want int) {
	t.Helper()
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		if _, got := n.Server.Store().Counts(); got != want {
			return fmt.Errorf("%s has %d instances, want %d", n.ID, got, want)
		}
		return nil
	})
}

// TestLaggingServerCatchesUpBySnapshotInstall: a server that restarts with
// an empty log (in-memory Raft stores) after the leader compacted its log
// can only catch up by installing the leader's snapshot. (raft-wal keeps
// serving compacted entries still in its open segment, so on durable
// stores the leader would send logs instead.)
func TestLaggingServerCatchesUpBySnapshotInstall(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{InMemoryRaft: true})
	f := c.Follower()
	if err := c.Nodes[f].Stop(); err != nil {
		t.Fatal(err)
	}
	l := c.Leader()
	cl := c.Client(l)
	for i := 0; i < 50; i++ {
		register(t, cl, "api", fmt.Sprintf("i%d", i))
	}
	// Compact on every running server: under load, leadership may move to
	// the other one before the lagging server is back.
	for i, n := range c.Nodes {
		if i != f {
			waitCount(t, n, 50)
			compactAfterSnapshot(t, n)
		}
	}
	c.Nodes[f].Restart()
	waitCount(t, c.Nodes[f], 50)
	// Raft restores the FSM before it records the installed snapshot, so
	// the count can be visible a moment before last_snapshot_index moves.
	// The follower takes no snapshot of its own here (its threshold is
	// 16384 entries), so a non-zero index means it installed the leader's.
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		if got := c.Nodes[f].Server.Raft().Stats()["last_snapshot_index"]; got == "0" {
			return fmt.Errorf("follower last_snapshot_index %s: caught up without a snapshot", got)
		}
		return nil
	})
}

// TestRestartRestoresLocalSnapshot: a server restarted from disk restores
// its own snapshot, then replays the log after it.
func TestRestartRestoresLocalSnapshot(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{})
	cl := c.Client(c.Leader())
	for i := 0; i < 20; i++ {
		register(t, cl, "api", fmt.Sprintf("i%d", i))
	}
	f := c.Follower()
	waitCount(t, c.Nodes[f], 20)
	compactAfterSnapshot(t, c.Nodes[f])
	for i := 20; i < 30; i++ {
		register(t, cl, "api", fmt.Sprintf("i%d", i))
	}
	waitCount(t, c.Nodes[f], 30)
	if err := c.Nodes[f].Stop(); err != nil {
		t.Fatal(err)
	}
	c.Nodes[f].Restart()
	if got := c.Nodes[f].Server.Raft().Stats()["last_snapshot_index"]; got == "0" {
		t.Fatal("restarted server did not restore its snapshot")
	}
	waitCount(t, c.Nodes[f], 30)
}

func TestRemoveAndReAddServer(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{})
	victim := c.Follower()
	id := c.Nodes[victim].ID
	if err := c.Nodes[victim].Stop(); err != nil {
		t.Fatal(err)
	}
	cl := c.Client(c.Leader())
	if _, err := cl.Operator.RemovePeer(controlplanetest.Ctx(t), &apipb.RemovePeerRequest{Id: id}); err != nil {
		t.Fatalf("remove-peer: %v", err)
	}
	c.WaitVoters(2)
	// Removing an unknown server is a clear NotFound.
	_, err := cl.Operator.RemovePeer(controlplanetest.Ctx(t), &apipb.RemovePeerRequest{Id: id})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("remove unknown peer: %v, want NotFound", err)
	}
	// A fresh server (new data dir) joins under the old name.
	n := c.AddServer(id)
	c.WaitVoters(3)
	register(t, cl, "api", "after-readd")
	waitInstance(t, c, len(c.Nodes)-1, "api", "after-readd")
	if !n.Running() {
		t.Fatal("re-added server not running")
	}
}

func TestJoinRejectsExistingMember(t *testing.T) {
	c := controlplanetest.Start(t, 2, controlplanetest.Options{})
	// Joining with the name of a current member is refused with advice.
	cl := c.ClientWithToken(c.Leader(), c.ServerToken())
	_, csr := newCSR(t)
	_, err := cl.Cluster.Join(controlplanetest.Ctx(t), &apipb.JoinRequest{NodeId: c.Nodes[1].ID, Address: "127.0.0.1:1", Csr: csr})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "remove-peer") {
		t.Fatalf("join as existing member: %v, want FailedPrecondition with advice", err)
	}
}

// newCSR returns a fresh key and a CSR over it.
func newCSR(t testing.TB) (crypto.Signer, []byte) {
	t.Helper()
	key, err := ca.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

func stateKey(ns, name string) state.ServiceKey { return state.ServiceKey{Namespace: ns, Name: name} }

// TestCARotationAcrossServers: after a full rotation the servers still
// replicate and forward to each other, on SVIDs from the new root only.
func TestCARotationAcrossServers(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{Tweak: func(cfg *controlplane.Config) {
		cfg.CAPropagationDelay = time.Second
		cfg.MaxLeafTTL = 3 * time.Second
	}})
	cl := c.Client(c.Leader())
	ctx := controlplanetest.Ctx(t)
	if _, err := cl.Operator.RotateCA(ctx, &apipb.RotateCARequest{}); err != nil {
		t.Fatal(err)
	}
	// A second rotation while one is in progress is refused clearly.
	if _, err := cl.Operator.RotateCA(ctx, &apipb.RotateCARequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second rotate: %v, want FailedPrecondition", err)
	}
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		st, err := cl.Operator.CAStatus(ctx, &apipb.CAStatusRequest{})
		if err != nil {
			return err
		}
		if len(st.Roots) != 1 {
			return fmt.Errorf("%d roots, want the new one only", len(st.Roots))
		}
		for _, n := range c.Nodes {
			if got := len(n.Server.Bundle().X509Authorities()); got != 1 {
				return fmt.Errorf("%s trusts %d roots", n.ID, got)
			}
		}
		return nil
	})
	// Writes through a follower (forwarded over mTLS) replicate to all.
	register(t, c.Client(c.Follower()), "api", "after-rotation")
	for i := range c.Nodes {
		waitInstance(t, c, i, "api", "after-rotation")
	}
	// A server joining now pins the new root.
	c.AddServer("s3")
	c.WaitVoters(4)
}

// TestWritesThroughFollowerRideOverLeaderLoss: a client keeps writing to
// one follower while the leader dies; the follower's forwards fail until a
// new leader is elected, and the client's retries must carry every write.
func TestWritesThroughFollowerRideOverLeaderLoss(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{})
	l := c.Leader()
	f := (l + 1) % 3
	cl := c.Client(f)
	register(t, cl, "api", "warm") // the follower has a connection to the leader
	if err := c.Nodes[l].Stop(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		register(t, cl, "api", fmt.Sprintf("during-%d", i))
	}
}
