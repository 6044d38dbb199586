package state_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

func vipBatch(cidr string, version uint64, resync bool, svcs ...string) *statepb.Command {
	b := &state.ImportBatch{Peer: "b", Version: version, Resync: resync, VirtualIPCIDR: cidr}
	for _, s := range svcs {
		b.Changes = append(b.Changes, svcChange(s))
	}
	return state.ImportCommand(b)
}

func vipOf(t *testing.T, s *state.Store, svc string) string {
	t.Helper()
	v, _, _, ok := s.Service(state.ServiceKey{Peer: "b", Namespace: "ns", Name: svc}, false)
	if !ok {
		t.Fatalf("no import %s", svc)
	}
	return v.VirtualIp
}

func TestVirtualIPs(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(0)}
	// A /29 has six usable addresses: .1 to .6.
	const cidr = "127.240.0.0/29"
	applyAll(t, f, 1, peerCmd("b", "b.strait"), vipBatch(cidr, 1, false, "a", "b", "c"))
	for svc, want := range map[string]string{"a": "127.240.0.1", "b": "127.240.0.2", "c": "127.240.0.3"} {
		if got := vipOf(t, f.Store, svc); got != want {
			t.Fatalf("%s got %s, want %s", svc, got, want)
		}
	}
	// Stable across updates and resyncs, whatever range later batches carry.
	applyAll(t, f, 3, vipBatch("127.250.0.0/24", 2, true, "a", "b", "c"))
	if got := vipOf(t, f.Store, "b"); got != "127.240.0.2" {
		t.Fatalf("b moved to %s", got)
	}
	// A released address is reused only after the rest of the range.
	applyAll(t, f, 4,
		vipBatch(cidr, 3, true, "a", "c"), // b's .2 released
		vipBatch(cidr, 4, false, "d", "e", "f", "g"),
	)
	want := map[string]string{"d": "127.240.0.4", "e": "127.240.0.5", "f": "127.240.0.6", "g": "127.240.0.2"}
	for svc, w := range want {
		if got := vipOf(t, f.Store, svc); got != w {
			t.Fatalf("%s got %s, want %s", svc, got, w)
		}
	}
	// Full: the service is imported without an address rather than refused.
	applyAll(t, f, 6, vipBatch(cidr, 5, false, "h"))
	if got := vipOf(t, f.Store, "h"); got != "" {
		t.Fatalf("h got %s from a full range", got)
	}
	// The allocator's position survives a snapshot: after a restore, the
	// next address is the same as on a replica that applied the log.
	g := &state.FSM{Store: state.NewStore(0)}
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	next := vipBatch(cidr, 6, true, "a", "c", "d", "e", "f", "g", "h") // h still gets none
	drop := vipBatch(cidr, 7, false)
	drop.GetImportBatch().Changes = []*statepb.Change{{Change: &statepb.Change_ServiceDeleted{ServiceDeleted: &statepb.ServiceKey{Namespace: "ns", Name: "d"}}}}
	again := vipBatch(cidr, 8, false, "i")
	for _, fsm := range []*state.FSM{f, g} {
		applyAll(t, fsm, 7, next, drop, again)
		if got := vipOf(t, fsm.Store, "i"); got != "127.240.0.4" {
			t.Fatalf("i got %s, want the released .4", got)
		}
	}
}
