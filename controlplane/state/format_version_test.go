package state_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// TestNewerCommandFormatHaltsTheStore: a command in a format newer than
// the server understands is refused, and so is everything after it (the
// store must not record a state that skipped a command), snapshots
// included, while reads keep the state before it; a restore (what an
// upgraded server does on restart) clears that.
func TestNewerCommandFormatHaltsTheStore(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(0)}
	applyAll(t, f, 1, regCmd("api", "a1", "http"))
	good := snapshotBytes(t, f)

	future := regCmd("web", "w1", "http")
	future.Format = state.CommandFormat + 1
	res := applyAll(t, f, 2, future, regCmd("db", "d1", "tcp"))
	for i, r := range res {
		if !errors.Is(r.Err, state.ErrFormat) {
			t.Fatalf("entry %d: got %v, want ErrFormat", i+2, r.Err)
		}
	}
	if err := f.Halted(); !errors.Is(err, state.ErrFormat) {
		t.Fatalf("Halted() = %v", err)
	}
	// A non-command entry (a configuration change, a no-op) does not
	// move the index past the refused command either.
	f.Apply(&raft.Log{Index: 4, Type: raft.LogNoop})
	if f.Index() != 1 {
		t.Fatalf("index %d, want 1 (the last command applied)", f.Index())
	}
	if n, _ := f.Counts(); n != 1 {
		t.Fatalf("%d services, want the one before the refused command", n)
	}
	if _, err := f.Snapshot(); !errors.Is(err, state.ErrFormat) {
		t.Fatalf("snapshot of a halted store: %v, want ErrFormat", err)
	}

	if err := f.Restore(io.NopCloser(bytes.NewReader(good))); err != nil {
		t.Fatal(err)
	}
	if err := f.Halted(); err != nil {
		t.Fatalf("after restore, Halted() = %v", err)
	}
	if r := applyAll(t, f, 2, regCmd("db", "d1", "tcp")); r[0].Err != nil {
		t.Fatal(r[0].Err)
	}
}

// TestEncodeStampsTheFormat: commands are written in CommandFormat, and
// one without a format (written before commands carried one) applies.
func TestEncodeStampsTheFormat(t *testing.T) {
	b, err := state.Encode(regCmd("api", "a1", "http"))
	if err != nil {
		t.Fatal(err)
	}
	var cmd statepb.Command
	if err := proto.Unmarshal(b, &cmd); err != nil {
		t.Fatal(err)
	}
	if cmd.Format != state.CommandFormat {
		t.Fatalf("format %d, want %d", cmd.Format, state.CommandFormat)
	}
	cmd.Format = 0
	old, err := proto.Marshal(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	f := &state.FSM{Store: state.NewStore(0)}
	if r := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: old}).(state.Result); r.Err != nil {
		t.Fatal(r.Err)
	}
}
