package state_test

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

func peerCmd(name, td string) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: &statepb.ForeignBundle{
		TrustDomain: td, Bundle: []byte("{}"), PeerName: name}}}
}

func svcChange(name string) *apipb.Change {
	return &apipb.Change{Change: &apipb.Change_Service{Service: &apipb.Service{Namespace: "ns", Name: name}}}
}

func instChange(svc, id string) *apipb.Change {
	return &apipb.Change{Change: &apipb.Change_Instance{Instance: &apipb.Instance{Namespace: "ns", Service: svc, Id: id, Address: "10.0.0.1"}}}
}

func batch(peer string, version uint64, resync bool, changes ...*apipb.Change) *statepb.Command {
	return state.ImportCommand(&state.ImportBatch{Peer: peer, Version: version, Resync: resync, Changes: changes})
}

// ids lists the instances of a service imported from peer; nil when the
// service is absent.
func ids(s *state.Store, peer, svc string) []string {
	_, insts, _, ok := s.Service(state.ServiceKey{Peer: peer, Namespace: "ns", Name: svc}, false)
	if !ok {
		return nil
	}
	out := []string{}
	for _, in := range insts {
		out = append(out, in.Id)
	}
	return out
}

func TestImports(t *testing.T) {
	f := &state.FSM{Store: state.NewStore(0)}
	res := applyAll(t, f, 1,
		batch("b", 1, true, svcChange("api")), // no such peer yet
		peerCmd("b", "b.strait"),
		regCmd("api", "local-1", "http"), // a local service of the same name
		batch("b", 10, true, svcChange("api"), instChange("api", "i1"), instChange("api", "i2"), svcChange("web"), instChange("web", "w1")),
	)
	if !errors.Is(res[0].Err, state.ErrNotFound) {
		t.Fatalf("import from an unknown peer: %v", res[0].Err)
	}
	if got := ids(f.Store, "b", "api"); !slices.Equal(got, []string{"i1", "i2"}) {
		t.Fatalf("imported api %v", got)
	}
	if got := ids(f.Store, "", "api"); !slices.Equal(got, []string{"local-1"}) {
		t.Fatalf("local api %v: imports must not touch local services", got)
	}
	sub := f.Subscribe(f.Index())
	next(t, sub) // synced marker

	// A delta; then a stale delta (older version) changes nothing.
	applyAll(t, f, 5,
		batch("b", 11, false, instChange("api", "i3"), &apipb.Change{Change: &apipb.Change_InstanceDeleted{InstanceDeleted: &apipb.InstanceKey{Namespace: "ns", Service: "api", Id: "i1"}}}),
		batch("b", 9, false, &apipb.Change{Change: &apipb.Change_ServiceDeleted{ServiceDeleted: &apipb.ServiceKey{Namespace: "ns", Name: "web"}}}),
	)
	if got := ids(f.Store, "b", "api"); !slices.Equal(got, []string{"i2", "i3"}) {
		t.Fatalf("after delta: %v", got)
	}
	if ids(f.Store, "b", "web") == nil {
		t.Fatal("a delta older than the applied version was applied")
	}
	// Watchers see imports with their peer.
	ev := next(t, sub)
	if in := ev.Changes[0].GetInstance(); in == nil || in.Peer != "b" || in.Id != "i3" {
		t.Fatalf("watch event %v", ev)
	}

	// A resync is a diff: only what differs changes.
	applyAll(t, f, 7, batch("b", 20, true, svcChange("api"), instChange("api", "i3"), instChange("api", "i4")))
	if got := ids(f.Store, "b", "api"); !slices.Equal(got, []string{"i3", "i4"}) {
		t.Fatalf("after resync: %v", got)
	}
	if ids(f.Store, "b", "web") != nil {
		t.Fatal("resync kept a service the peer no longer exports")
	}
	ev = next(t, sub)
	var kinds []string
	for _, c := range ev.Changes {
		switch x := c.Change.(type) {
		case *apipb.Change_Instance:
			kinds = append(kinds, "+"+x.Instance.Id)
		case *apipb.Change_InstanceDeleted:
			kinds = append(kinds, "-"+x.InstanceDeleted.Id)
		case *apipb.Change_ServiceDeleted:
			kinds = append(kinds, "-"+x.ServiceDeleted.Name)
		case *apipb.Change_Service:
			kinds = append(kinds, "+"+x.Service.Name)
		}
	}
	if !slices.Equal(kinds, []string{"-i2", "-w1", "-web", "+i4"}) {
		t.Fatalf("resync published %v, want only the difference", kinds)
	}
	imp, ok := f.PeerImport("b")
	if !ok || imp.Version != 20 || imp.LastContact == nil {
		t.Fatalf("peer import %v", imp)
	}
	// A change of the peer's gateways wakes the mesh watchers (xDS).
	meshCh := f.MeshChanged()
	gw := batch("b", 20, false)
	gw.GetImportBatch().Gateways = &statepb.GatewaySet{Addresses: []string{"192.0.2.1:8443"}}
	applyAll(t, f, 7, gw)
	select {
	case <-meshCh:
	default:
		t.Fatal("a new gateway list did not wake the mesh watchers")
	}

	// Imports survive a snapshot.
	g := &state.FSM{Store: state.NewStore(0)}
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	if got := ids(g.Store, "b", "api"); !slices.Equal(got, []string{"i3", "i4"}) {
		t.Fatalf("restored imports %v", got)
	}
	if imp, ok := g.PeerImport("b"); !ok || imp.Version != 20 {
		t.Fatalf("restored peer import %v", imp)
	}

	// Only replication writes imports; and removing the peer drops them,
	// and drops the peer from exports.
	export := func(svc string, to ...string) *statepb.Command {
		return state.SetExportCommand(&apipb.Export{Namespace: "ns", Service: svc, To: to})
	}
	applyAll(t, f, 8, export("api", "b", "c"), export("web", "b"))
	exportsCh := f.ExportsChanged()
	res = applyAll(t, f, 10,
		state.RegisterCommand(&apipb.RegisterRequest{Service: &apipb.Service{Namespace: "ns", Name: "api", Peer: "b"}}),
		&statepb.Command{Cmd: &statepb.Command_DeleteForeignBundle{DeleteForeignBundle: &statepb.DeleteForeignBundle{TrustDomain: "b.strait"}}},
		batch("b", 21, false, instChange("api", "i9")),
	)
	if ex := f.Exports(); len(ex) != 1 || ex[0].Service != "api" || !slices.Equal(ex[0].To, []string{"c"}) {
		t.Fatalf("exports after removing peer b: %v", ex)
	}
	select {
	case <-exportsCh:
	default:
		t.Fatal("export watchers not woken by the removal")
	}
	if !errors.Is(res[0].Err, state.ErrMalformed) {
		t.Fatalf("register of an imported service: %v", res[0].Err)
	}
	if ids(f.Store, "b", "api") != nil {
		t.Fatal("imports kept after the peering was removed")
	}
	if _, ok := f.PeerImport("b"); ok {
		t.Fatal("peer import state kept after removal")
	}
	if !errors.Is(res[2].Err, state.ErrNotFound) {
		t.Fatalf("late batch after removal: %v", res[2].Err)
	}
	if svcs, insts := f.Counts(); svcs != 1 || insts != 1 {
		t.Fatalf("counts %d/%d, want only the local service", svcs, insts)
	}
}
