package state_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

func limited(cmd *statepb.Command, lim *statepb.ImportLimits, cidr string) *statepb.Command {
	b := cmd.GetImportBatch()
	b.Limits, b.VirtualIpCidr = lim, cidr
	return cmd
}

func svcDeleted(name string) *apipb.Change {
	return &apipb.Change{Change: &apipb.Change_ServiceDeleted{ServiceDeleted: &apipb.ServiceKey{Namespace: "ns", Name: name}}}
}

func instDeleted(svc, id string) *apipb.Change {
	return &apipb.Change{Change: &apipb.Change_InstanceDeleted{InstanceDeleted: &apipb.InstanceKey{Namespace: "ns", Service: svc, Id: id}}}
}

// checkUsage asserts that the usage the store keeps up to date matches a
// recount from a snapshot.
func checkUsage(t *testing.T, f *state.FSM, peer string) state.ImportUsage {
	t.Helper()
	g := &state.FSM{Store: state.NewStore(0)}
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	got, want := f.ImportUsage(peer), g.ImportUsage(peer)
	if got != want {
		t.Fatalf("usage of %s kept as %+v, recounted as %+v", peer, got, want)
	}
	svcs, insts := f.ImportCounts(peer)
	if svcs != got.Services || insts != got.Instances {
		t.Fatalf("ImportCounts %d/%d, usage %+v", svcs, insts, got)
	}
	return got
}

func TestImportQuotasRefuseWholeBatch(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(0)}
	lim := &statepb.ImportLimits{MaxServices: 3, MaxInstances: 4}
	const cidr = "127.240.0.0/24"
	res := applyAll(t, f, 1, peerCmd("b", "b.strait"),
		limited(batch("b", 1, true, svcChange("a"), instChange("a", "a1"), svcChange("c"), instChange("c", "c1")), lim, cidr))
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	before := checkUsage(t, f, "b")
	if before.Services != 2 || before.Instances != 2 || before.Bytes <= 0 || before.VIPs != 2 {
		t.Fatalf("usage %+v", before)
	}

	// Each of these would go over a quota: refused whole, naming it, and
	// the imports stay as they were.
	for _, tc := range []struct {
		name, quota string
		cmd         *statepb.Command
	}{
		{"resync over services", state.QuotaServices,
			batch("b", 2, true, svcChange("a"), svcChange("x"), svcChange("y"), svcChange("z"))},
		{"delta over services", state.QuotaServices,
			batch("b", 2, false, svcChange("x"), instChange("x", "x1"), svcChange("y"))},
		{"delta over instances", state.QuotaInstances,
			batch("b", 2, false, instChange("a", "a2"), instChange("a", "a3"), instChange("c", "c2"))},
		{"delete then re-add still counts", state.QuotaInstances,
			batch("b", 2, false, svcDeleted("c"), svcChange("c"), instChange("c", "c1"), instChange("a", "a2"), instChange("a", "a3"), instChange("c", "c2"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := applyAll(t, f, 10, limited(tc.cmd, lim, cidr))[0]
			var qe *state.QuotaError
			if !errors.Is(r.Err, state.ErrQuota) || !errors.As(r.Err, &qe) || qe.Quota != tc.quota || qe.Peer != "b" {
				t.Fatalf("got %v, want a refusal for %s", r.Err, tc.quota)
			}
			if !strings.Contains(r.Err.Error(), "over the quota of") {
				t.Fatalf("message %q", r.Err)
			}
			if got := checkUsage(t, f, "b"); got != before {
				t.Fatalf("usage changed by a refused batch: %+v, was %+v", got, before)
			}
			if got := ids(f.Store, "b", "a"); !slices.Equal(got, []string{"a1"}) {
				t.Fatalf("a now %v", got)
			}
			if ids(f.Store, "b", "x") != nil {
				t.Fatal("part of a refused batch was applied")
			}
		})
	}

	// Within quota, including a batch that removes as much as it adds.
	ok := limited(batch("b", 3, false, instDeleted("a", "a1"), instChange("a", "a2"), instChange("c", "c2"), instChange("c", "c3"), svcChange("d")), lim, cidr)
	if r := applyAll(t, f, 20, ok)[0]; r.Err != nil {
		t.Fatal(r.Err)
	}
	if u := checkUsage(t, f, "b"); u.Services != 3 || u.Instances != 4 {
		t.Fatalf("usage %+v", u)
	}

	// Bytes: the quota lowered below what is held refuses growth but lets
	// the peer shrink.
	u := f.ImportUsage("b")
	tight := &statepb.ImportLimits{MaxBytes: uint64(u.Bytes) - 1}
	if r := applyAll(t, f, 30, limited(batch("b", 4, false, instChange("d", "d1")), tight, cidr))[0]; !errors.Is(r.Err, state.ErrQuota) {
		t.Fatalf("growth over the bytes quota: %v", r.Err)
	}
	if r := applyAll(t, f, 31, limited(batch("b", 4, false, svcDeleted("d")), tight, cidr))[0]; r.Err != nil {
		t.Fatalf("shrinking while over quota: %v", r.Err)
	}
	// A batch without limits (written before quotas existed) is applied
	// as before.
	if r := applyAll(t, f, 32, batch("b", 5, false, svcChange("p"), svcChange("q"), svcChange("r")))[0]; r.Err != nil {
		t.Fatal(r.Err)
	}
	checkUsage(t, f, "b")
	// Removing the peering removes its usage.
	if r := applyAll(t, f, 40, &statepb.Command{Cmd: &statepb.Command_DeleteForeignBundle{DeleteForeignBundle: &statepb.DeleteForeignBundle{TrustDomain: "b.strait"}}})[0]; r.Err != nil {
		t.Fatal(r.Err)
	}
	if u := checkUsage(t, f, "b"); u != (state.ImportUsage{}) {
		t.Fatalf("usage after removal %+v", u)
	}
}

// TestImportedSizeIgnoresStampedFields: the bytes a record counts are the
// same whether measured as the peer sent it or as stored.
func TestImportedSizeIgnoresStampedFields(t *testing.T) {
	sent := &apipb.Instance{Namespace: "ns", Service: "a", Id: "a1", Address: "10.0.0.1", CreateIndex: 7, ModifyIndex: 9}
	stored := &apipb.Instance{Namespace: "ns", Service: "a", Id: "a1", Address: "10.0.0.1", Peer: "b", Health: apipb.Health_HEALTH_PASSING, CreateIndex: 123456789, ModifyIndex: 123456790}
	c := func(in *apipb.Instance) *apipb.Change {
		return &apipb.Change{Change: &apipb.Change_Instance{Instance: in}}
	}
	if a, b := state.ImportedSize(c(sent)), state.ImportedSize(c(stored)); a != b || a == 0 {
		t.Fatalf("sent %d, stored %d", a, b)
	}
}

// TestVIPShares: a peer flooding more services than its share of the range
// cannot keep a second peer's services from getting addresses, and what it
// gets without one is counted.
func TestVIPShares(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(0)}
	const cidr = "127.240.0.0/26" // 62 usable: 31 per peer
	lim := &statepb.ImportLimits{MaxServices: 1000}
	flood := func(peer string, n int) *statepb.Command {
		b := &state.ImportBatch{Peer: peer, Version: 1, Resync: true, VirtualIPCIDR: cidr, Limits: lim}
		for i := range n {
			b.Changes = append(b.Changes, svcChange(fmt.Sprintf("s%03d", i)))
		}
		return state.ImportCommand(b)
	}
	for _, r := range applyAll(t, f, 1, peerCmd("flood", "flood.strait"), peerCmd("ok", "ok.strait"), flood("flood", 200), flood("ok", 20)) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	fu, ou := checkUsage(t, f, "flood"), checkUsage(t, f, "ok")
	if fu.VIPs != 31 || fu.WithoutVIP != 169 {
		t.Fatalf("flooding peer %+v, want 31 addresses and 169 services without", fu)
	}
	if ou.VIPs != 20 || ou.WithoutVIP != 0 {
		t.Fatalf("second peer %+v, want an address for each of its 20 services", ou)
	}
	sums, _ := f.ServiceSummaries("")
	seen := map[string]bool{}
	for _, s := range sums {
		if v := s.Service.VirtualIp; v != "" {
			if seen[v] {
				t.Fatalf("%s given twice", v)
			}
			seen[v] = true
		}
	}
	// Once the flooding peer drops services, those without an address get
	// one on their next update.
	if r := applyAll(t, f, 10, flood("flood", 20))[0]; r.Err != nil {
		t.Fatal(r.Err)
	}
	if u := checkUsage(t, f, "flood"); u.VIPs != 20 || u.WithoutVIP != 0 {
		t.Fatalf("flooding peer after shrinking %+v", u)
	}
}

// BenchmarkVIPAlloc measures one allocation from a /16 with n addresses
// allocated, all of them between the allocator's position and the first
// free address (the worst case of a walk over the range), and its release.
// The position is moved off the range first by an allocation from another
// range. The cost must not grow with n.
func BenchmarkVIPAlloc(b *testing.B) {
	for _, n := range []int{1000, 10000, 60000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			f := &state.FSM{Store: state.NewStore(1)}
			const cidr, other = "240.0.0.0/16", "241.0.0.0/16"
			var index uint64
			apply := func(cmd *statepb.Command) {
				index++
				data, err := state.Encode(cmd)
				if err != nil {
					b.Fatal(err)
				}
				if r := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(state.Result); r.Err != nil {
					b.Fatal(r.Err)
				}
			}
			version := uint64(0)
			one := func(cidr string, c *apipb.Change) *statepb.Command {
				version++
				return state.ImportCommand(&state.ImportBatch{Peer: "b", Version: version, VirtualIPCIDR: cidr, Changes: []*apipb.Change{c}})
			}
			apply(peerCmd("b", "b.strait"))
			for i := 0; i < n; i += 5000 {
				version++
				bt := &state.ImportBatch{Peer: "b", Version: version, VirtualIPCIDR: cidr}
				for j := i; j < min(n, i+5000); j++ {
					bt.Changes = append(bt.Changes, svcChange(fmt.Sprintf("s%d", j)))
				}
				apply(state.ImportCommand(bt))
			}
			if u := f.ImportUsage("b"); u.VIPs != n {
				b.Fatalf("%d allocated, want %d", u.VIPs, n)
			}
			b.ResetTimer()
			for range b.N {
				apply(one(other, svcChange("mover"))) // the position leaves the range
				apply(one(cidr, svcChange("extra")))  // walks past the n allocated
				apply(one(cidr, svcDeleted("extra")))
				apply(one(other, svcDeleted("mover")))
			}
			b.StopTimer()
			if u := f.ImportUsage("b"); u.VIPs != n {
				b.Fatalf("%d allocated after the loop, want %d", u.VIPs, n)
			}
		})
	}
}
