package state_test

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// BenchmarkImportApply measures applying import commands: a resync of a
// peer's whole catalog (1,000 services of 10 instances), and a delta of
// 1,000 instance updates into a service of 10,000 instances, with the
// default quotas on the batches.
func BenchmarkImportApply(b *testing.B) {
	lim := &statepb.ImportLimits{MaxServices: 10_000, MaxInstances: 100_000, MaxBytes: 64 << 20}
	inst := func(svc string, i, gen int) *apipb.Change {
		return &apipb.Change{Change: &apipb.Change_Instance{Instance: &apipb.Instance{Namespace: "ns", Service: svc, Id: fmt.Sprintf("i%d", i),
			Address: fmt.Sprintf("10.0.%d.%d", i/250, i%250), Ports: map[string]uint32{"http": uint32(8000 + gen%2)}, Zone: "z1"}}}
	}
	var resync, big []*apipb.Change
	for s := range 1000 {
		name := fmt.Sprintf("s%d", s)
		resync = append(resync, svcChange(name))
		for i := range 10 {
			resync = append(resync, inst(name, i, 0))
		}
	}
	big = append(big, svcChange("big"))
	for i := range 10_000 {
		big = append(big, inst("big", i, 0))
	}
	for _, tc := range []struct {
		name  string
		setup []*apipb.Change
		each  func(n int) ([]*apipb.Change, bool)
	}{
		{"resync", nil, func(int) ([]*apipb.Change, bool) { return resync, true }},
		{"delta", big, func(n int) ([]*apipb.Change, bool) {
			var cs []*apipb.Change
			for i := range 1000 {
				cs = append(cs, inst("big", (n*1000+i)%10_000, n))
			}
			return cs, false
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			f := &state.FSM{Store: state.NewStore(1)}
			var index uint64
			apply := func(changes []*apipb.Change, resync bool) {
				index++
				cmd := state.ImportCommand(&state.ImportBatch{
					Peer: "b", Version: index, Resync: resync, Changes: changes, VirtualIPCIDR: "240.0.0.0/16", Limits: lim})
				data, err := state.Encode(cmd)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				r := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(state.Result)
				b.StopTimer()
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
			b.StopTimer()
			f.Apply(&raft.Log{Index: 1000, Type: raft.LogCommand, Data: mustEncode(b, peerCmd("b", "b.strait"))})
			index = 1000
			if tc.setup != nil {
				apply(tc.setup, false)
			}
			b.ResetTimer()
			for n := range b.N {
				cs, rs := tc.each(n)
				apply(cs, rs)
			}
		})
	}
}

func mustEncode(b *testing.B, cmd *statepb.Command) []byte {
	data, err := state.Encode(cmd)
	if err != nil {
		b.Fatal(err)
	}
	return data
}
