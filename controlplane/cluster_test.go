package controlplane_test

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/apiclient"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state"
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

func TestRestartedServerCatchesUpFromSnapshot(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{})
	f := c.Follower()
	if err := c.Nodes[f].Stop(); err != nil {
		t.Fatal(err)
	}
	l := c.Leader()
	cl := c.Client(l)
	for i := 0; i < 50; i++ {
		register(t, cl, "api", fmt.Sprintf("i%d", i))
	}
	// Compact the leader's log past what the stopped follower has, so it
	// can only catch up by installing a snapshot.
	lr := c.Nodes[l].Server.Raft()
	rc := lr.ReloadableConfig()
	rc.TrailingLogs, rc.SnapshotThreshold = 1, 1
	if err := lr.ReloadConfig(rc); err != nil {
		t.Fatal(err)
	}
	if err := lr.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	c.Nodes[f].Restart()
	waitInstance(t, c, f, "api", "i49")
	controlplanetest.WaitFor(t, 20e9, func() error {
		_, n := c.Nodes[f].Server.Store().Counts()
		if n != 50 {
			return fmt.Errorf("restarted follower has %d instances, want 50", n)
		}
		return nil
	})
	// It really went through a snapshot install.
	if got := c.Nodes[f].Server.Raft().Stats()["last_snapshot_index"]; got == "0" {
		t.Fatalf("follower last_snapshot_index %s: caught up without a snapshot", got)
	}
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
	_, err := c.Nodes[0].Server.Join(controlplanetest.Ctx(t), &apipb.JoinRequest{NodeId: c.Nodes[1].ID, Address: "127.0.0.1:1", Csr: []byte{1}})
	if !errors.Is(err, state.ErrConflict) {
		t.Fatalf("join as existing member: %v, want conflict", err)
	}
}

func stateKey(ns, name string) state.ServiceKey { return state.ServiceKey{Namespace: ns, Name: name} }
