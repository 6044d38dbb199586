package state_test

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/straitmesh/strait/controlplane/state"
)

// benchCatalog returns an FSM holding 1,000 local services of 10
// instances each, registered one command at a time.
func benchCatalog(b *testing.B) *state.FSM {
	f := &state.FSM{Store: state.NewStore(1)}
	var index uint64
	for s := range 1000 {
		for i := range 10 {
			index++
			r := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand,
				Data: mustEncode(b, regCmd(fmt.Sprintf("s%d", s), fmt.Sprintf("i%d", i), "http"))}).(state.Result)
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
	}
	return f
}

// BenchmarkRegisterApply measures applying one register command (a new
// instance of an existing service) to that catalog.
func BenchmarkRegisterApply(b *testing.B) {
	f := benchCatalog(b)
	index := f.Index()
	data := make([][]byte, 1000)
	for i := range data {
		data[i] = mustEncode(b, regCmd(fmt.Sprintf("s%d", i), fmt.Sprintf("new%d", i), "http"))
	}
	b.ResetTimer()
	for n := range b.N {
		index++
		r := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data[n%len(data)]}).(state.Result)
		if r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}

// BenchmarkSnapshot measures writing, then restoring, a snapshot of that
// catalog (11,000 records).
func BenchmarkSnapshot(b *testing.B) {
	f := benchCatalog(b)
	var snap []byte
	b.Run("persist", func(b *testing.B) {
		for range b.N {
			s, err := f.Snapshot()
			if err != nil {
				b.Fatal(err)
			}
			var sink memSink
			if err := s.Persist(&sink); err != nil {
				b.Fatal(err)
			}
			snap = sink.Bytes()
		}
		b.SetBytes(int64(len(snap)))
	})
	b.Run("restore", func(b *testing.B) {
		r := &state.FSM{Store: state.NewStore(1)}
		for range b.N {
			if err := r.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(len(snap)))
	})
}
