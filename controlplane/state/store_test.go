package state_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

func regCmd(svc, id string, ports ...string) *statepb.Command {
	s := &apipb.Service{Namespace: "ns", Name: svc}
	in := &apipb.Instance{Id: id, Address: "10.0.0.1", Ports: map[string]uint32{}}
	for _, p := range ports {
		s.Ports = append(s.Ports, &apipb.ServicePort{Name: p, Protocol: apipb.Protocol_PROTOCOL_TCP})
		in.Ports[p] = 80
	}
	req := &apipb.RegisterRequest{Service: s}
	if id != "" {
		req.Instance = in
	}
	return state.RegisterCommand(req)
}

func deregCmd(svc, id string) *statepb.Command {
	return state.DeregisterCommand(&apipb.DeregisterRequest{Namespace: "ns", Service: svc, InstanceId: id})
}

// applyAll applies commands at indexes 1..n through the FSM like Raft does.
func applyAll(t *testing.T, f *state.FSM, from uint64, cmds ...*statepb.Command) []state.Result {
	t.Helper()
	var out []state.Result
	for i, c := range cmds {
		b, err := state.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f.Apply(&raft.Log{Index: from + uint64(i), Type: raft.LogCommand, Data: b}).(state.Result))
	}
	return out
}

func TestApplyRejectsWithoutChange(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(0)}
	applyAll(t, f, 1, regCmd("api", "a1", "http"))
	before, _ := f.ServiceSummaries("")
	tests := []struct {
		name string
		cmd  *statepb.Command
		want error
	}{
		{"deregister unknown instance", deregCmd("api", "nope"), state.ErrNotFound},
		{"deregister unknown service", deregCmd("nope", ""), state.ErrNotFound},
		{"drop a port an instance uses", regCmd("api", "", "grpc"), state.ErrConflict},
		{"instance names an undefined port", state.RegisterCommand(&apipb.RegisterRequest{
			Service:  &apipb.Service{Namespace: "ns", Name: "api", Ports: []*apipb.ServicePort{{Name: "http"}}},
			Instance: &apipb.Instance{Id: "a2", Address: "10.0.0.2", Ports: map[string]uint32{"grpc": 1}},
		}), state.ErrConflict},
		{"revoke unknown token", &statepb.Command{Cmd: &statepb.Command_RevokeToken{RevokeToken: &statepb.RevokeToken{AccessorId: "x"}}}, state.ErrNotFound},
		{"consume unknown token", &statepb.Command{Cmd: &statepb.Command_ConsumeToken{ConsumeToken: &statepb.ConsumeToken{SecretHash: make([]byte, 32)}}}, state.ErrTokenInvalid},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := applyAll(t, f, uint64(10+i), tt.cmd)[0]
			if !errors.Is(res.Err, tt.want) {
				t.Fatalf("err %v, want %v", res.Err, tt.want)
			}
			after, _ := f.ServiceSummaries("")
			if fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("state changed by a rejected command:\n%v\n%v", before, after)
			}
		})
	}
}

func TestApplyIsDeterministic(t *testing.T) {
	cmds := []*statepb.Command{regCmd("api", "a1", "http"), regCmd("api", "a2", "http"), regCmd("web", "w1"), deregCmd("api", "a1")}
	snap := func() []byte {
		f := &state.FSM{Store: state.NewStore(0)}
		applyAll(t, f, 1, cmds...)
		return snapshotBytes(t, f)
	}
	a, b := snap(), snap()
	if !bytes.Equal(stripOrder(t, a), stripOrder(t, b)) {
		t.Fatal("two replicas applying the same log differ")
	}
}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { m.cancelled = true; return nil }
func (m *memSink) Close() error  { return nil }

func snapshotBytes(t *testing.T, f *state.FSM) []byte {
	t.Helper()
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := s.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

// stripOrder restores a snapshot and re-reads it in a canonical order.
func stripOrder(t *testing.T, b []byte) []byte {
	t.Helper()
	f := &state.FSM{Store: state.NewStore(0)}
	if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	sums, idx := f.ServiceSummaries("")
	fmt.Fprintln(&out, idx)
	for _, s := range sums {
		_, insts, _, _ := f.Service(state.ServiceKey{Namespace: s.Service.Namespace, Name: s.Service.Name}, false)
		fmt.Fprintln(&out, s, insts)
	}
	return out.Bytes()
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(0)}
	now := timestamppb.New(time.Unix(1700000000, 0))
	tok := state.NewTokenRecord(&apipb.Token{AccessorId: "acc", Kind: apipb.TokenKind_TOKEN_KIND_READ, CreateTime: now}, bytes.Repeat([]byte{7}, 32), "")
	applyAll(t, f, 1,
		&statepb.Command{Cmd: &statepb.Command_Bootstrap{Bootstrap: &statepb.Bootstrap{Site: "s", TrustDomain: "s.strait", Root: &statepb.CARoot{Certificate: []byte{1}, SealedKey: []byte{2}}}}},
		regCmd("api", "a1", "http"), regCmd("api", "a2", "http"), regCmd("empty", ""),
		&statepb.Command{Cmd: &statepb.Command_CreateToken{CreateToken: tok}},
	)
	b := snapshotBytes(t, f)
	g := &state.FSM{Store: state.NewStore(0)}
	if err := g.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stripOrder(t, b), stripOrder(t, snapshotBytes(t, g))) {
		t.Fatal("restored state differs")
	}
	if g.Index() != 5 || !proto.Equal(g.Site(), f.Site()) {
		t.Fatalf("index %d site %v", g.Index(), g.Site())
	}
	if _, ok := g.TokenBySecret([32]byte(bytes.Repeat([]byte{7}, 32))); !ok {
		t.Fatal("token lost in snapshot")
	}
	svcs, insts := g.Counts()
	if svcs != 2 || insts != 2 {
		t.Fatalf("counts %d/%d", svcs, insts)
	}
}

func TestRestoreRejectsCorruptSnapshotAndKeepsState(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(0)}
	applyAll(t, f, 1, regCmd("api", "a1", "http"))
	good := snapshotBytes(t, f)
	for name, b := range map[string][]byte{
		"empty":     {},
		"truncated": good[:len(good)-3],
		"garbage":   []byte("not a snapshot at all"),
	} {
		t.Run(name, func(t *testing.T) {
			if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err == nil {
				t.Fatal("corrupt snapshot restored")
			}
			if _, n := f.Counts(); n != 1 {
				t.Fatalf("state lost: %d instances", n)
			}
		})
	}
}

func next(t *testing.T, sub state.Watch) *apipb.WatchEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestWatchResumeAndResync(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(8)}
	applyAll(t, f, 1, regCmd("api", "a1", "http"))

	// From zero: a resync with the full state, then synced.
	sub := f.Subscribe(0)
	ev := next(t, sub)
	if !ev.Resync || len(ev.Changes) != 2 {
		t.Fatalf("first event %v, want resync with service and instance", ev)
	}
	if ev := next(t, sub); !ev.Synced || ev.Index != 1 {
		t.Fatalf("want synced at 1, got %v", ev)
	}
	// Live changes follow in order.
	applyAll(t, f, 2, regCmd("api", "a2", "http"), deregCmd("api", "a1"))
	if ev := next(t, sub); ev.Index != 2 || ev.Changes[0].GetInstance().GetId() != "a2" {
		t.Fatalf("got %v", ev)
	}
	if ev := next(t, sub); ev.Index != 3 || ev.Changes[0].GetInstanceDeleted().GetId() != "a1" {
		t.Fatalf("got %v", ev)
	}

	// Resuming from a retained index replays only what came after it.
	r := f.Subscribe(2)
	if ev := next(t, r); ev.Resync || ev.Index != 3 {
		t.Fatalf("resume: got %v, want the change at 3", ev)
	}
	if ev := next(t, r); !ev.Synced || ev.Index != 3 {
		t.Fatalf("resume: want synced at 3, got %v", ev)
	}

	// Resuming from an index older than the buffer keeps is a resync.
	for i := 0; i < 20; i++ {
		applyAll(t, f, uint64(4+i), regCmd("api", fmt.Sprintf("b%d", i), "http"))
	}
	old := f.Subscribe(2)
	if ev := next(t, old); !ev.Resync {
		t.Fatalf("resume from a trimmed index: got %v, want resync", ev)
	}

	// A snapshot restore resynchronises live watchers.
	snap := snapshotBytes(t, f)
	live := f.Subscribe(f.Index())
	if ev := next(t, live); !ev.Synced {
		t.Fatalf("got %v", ev)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, live); !ev.Resync {
		t.Fatalf("after restore: got %v, want resync", ev)
	}
}

func TestWatchSlowSubscriberIsResynchronised(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(4)}
	applyAll(t, f, 1, regCmd("api", "a0", "http"))
	sub := f.Subscribe(f.Index())
	next(t, sub) // synced
	for i := 1; i <= 50; i++ {
		applyAll(t, f, uint64(1+i), regCmd("api", fmt.Sprintf("a%d", i), "http"))
	}
	// The subscriber fell further behind than the buffer; it gets the
	// current state instead of 50 stale events.
	ev := next(t, sub)
	if !ev.Resync {
		t.Fatalf("got %v, want resync", ev)
	}
	n := len(ev.Changes)
	for !ev.Synced {
		ev = next(t, sub)
		n += len(ev.Changes)
	}
	if n != 52 || ev.Index != 51 {
		t.Fatalf("resync had %d changes ending at %d, want 52 at 51", n, ev.Index)
	}
}

func FuzzApplyCommand(f *testing.F) {
	for _, c := range []*statepb.Command{regCmd("api", "a1", "http"), deregCmd("api", "")} {
		b, _ := state.Encode(c)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := &state.FSM{Store: state.NewStore(0)}
		res := fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data})
		r, ok := res.(state.Result)
		if !ok {
			t.Fatalf("apply returned %T", res)
		}
		// A command in a newer format halts the store, which then refuses
		// to snapshot (it must never save a state that skipped a command).
		if err := fsm.Halted(); err != nil {
			if !errors.Is(err, state.ErrFormat) || !errors.Is(r.Err, state.ErrFormat) {
				t.Fatalf("halted with %v (result %v), want ErrFormat", err, r.Err)
			}
			if _, err := fsm.Snapshot(); err == nil {
				t.Fatal("a halted store took a snapshot")
			}
			return
		}
		// Whatever was applied must survive a snapshot round trip.
		snap := snapshotBytes(t, fsm)
		g := &state.FSM{Store: state.NewStore(0)}
		if err := g.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
			t.Fatalf("snapshot of applied state does not restore: %v", err)
		}
	})
}
