package controlplane

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// The TTL tracker needs only ttlRaft of the Raft node; here that is a
// state machine applied to directly, with a clock the test moves. The
// real path (a leader's tracker over Raft, and a new leader's grace) is
// covered by the cluster tests (TestTTLExpiryAndHeartbeat).

type directRaft struct {
	mu     sync.Mutex
	leader bool
	fsm    *state.FSM
	index  uint64
}

func (d *directRaft) IsLeader() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.leader
}

func (d *directRaft) Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.leader {
		return nil, 0, api.ErrNotLeader
	}
	if cmd.Time == nil {
		cmd.Time = timestamppb.Now()
	}
	data, err := state.Encode(cmd)
	if err != nil {
		return nil, 0, err
	}
	d.index++
	res := d.fsm.Apply(&raft.Log{Index: d.index, Type: raft.LogCommand, Data: data}).(state.Result)
	return res.Value, d.index, res.Err
}

func TestTTLTracker(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	node := &directRaft{leader: true, fsm: &state.FSM{Store: state.NewStore(0)}}
	tr := &ttlTracker{node: node, store: node.fsm.Store, now: func() time.Time { return now }, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx := context.Background()
	reg := func(id string, ttl time.Duration) {
		t.Helper()
		in := &apipb.Instance{Id: id, Address: "10.0.0.1", Ports: map[string]uint32{"tcp": 80}, Health: apipb.Health_HEALTH_PASSING}
		if ttl > 0 {
			in.Ttl = durationpb.New(ttl)
		}
		req := &apipb.RegisterRequest{Service: &apipb.Service{Namespace: "default", Name: "api", Ports: []*apipb.ServicePort{{Name: "tcp", Protocol: apipb.Protocol_PROTOCOL_TCP}}}, Instance: in}
		if _, _, err := node.Apply(ctx, state.RegisterCommand(req)); err != nil {
			t.Fatal(err)
		}
	}
	key := func(id string) *apipb.InstanceKey {
		return &apipb.InstanceKey{Namespace: "default", Service: "api", Id: id}
	}
	health := func(id string) apipb.Health {
		in, _ := node.fsm.Store.Instance(key(id))
		return in.Health
	}
	reg("beating", 10*time.Second)
	reg("silent", 10*time.Second)
	reg("no-ttl", 0)

	// Heartbeats: refused on a follower, for an unknown instance, or for
	// one registered without a TTL.
	node.leader = false
	if err := tr.Heartbeat(ctx, key("beating")); !errors.Is(err, api.ErrNotLeader) {
		t.Fatalf("heartbeat on a follower: %v", err)
	}
	node.leader = true
	if err := tr.Heartbeat(ctx, key("ghost")); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("heartbeat of an unknown instance: %v", err)
	}
	if err := tr.Heartbeat(ctx, key("no-ttl")); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("heartbeat of an instance without a ttl: %v", err)
	}

	// The first scan grants a full TTL of grace to what it sees passing.
	if got := tr.expired(); len(got) != 0 {
		t.Fatalf("expired at once: %v", got)
	}
	now = now.Add(8 * time.Second)
	if err := tr.Heartbeat(ctx, key("beating")); err != nil {
		t.Fatal(err)
	}
	now = now.Add(8 * time.Second) // 16s after the first scan, 8s after the beat
	got := tr.expired()
	if len(got) != 1 || got[0].Id != "silent" {
		t.Fatalf("expired %v, want silent only", got)
	}

	// A heartbeat revives a critical instance through Raft.
	cmd := state.SetHealthCommand(got, apipb.Health_HEALTH_CRITICAL)
	if _, _, err := node.Apply(ctx, cmd); err != nil {
		t.Fatal(err)
	}
	if h := health("silent"); h != apipb.Health_HEALTH_CRITICAL {
		t.Fatalf("silent is %s", h)
	}
	if err := tr.Heartbeat(ctx, key("silent")); err != nil {
		t.Fatal(err)
	}
	if h := health("silent"); h != apipb.Health_HEALTH_PASSING {
		t.Fatalf("silent after a heartbeat is %s, want passing", h)
	}
}
