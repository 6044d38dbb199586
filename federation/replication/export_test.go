package replication_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/replication"
)

// pipe is an in-memory Replicate stream (a fake transport: these tests
// exercise the exporter's logic; the cluster tests run the real stream).
type pipe struct {
	ctx    context.Context
	events chan *apipb.ReplicationEvent
	reqs   chan *apipb.ReplicateRequest
}

func (p *pipe) Context() context.Context { return p.ctx }
func (p *pipe) Send(ev *apipb.ReplicationEvent) error {
	select {
	case p.events <- ev:
		return nil
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
}
func (p *pipe) Recv() (*apipb.ReplicateRequest, error) {
	select {
	case r := <-p.reqs:
		return r, nil
	case <-p.ctx.Done():
		return nil, p.ctx.Err()
	}
}

// received folds events into the importer's view: service -> instance IDs.
type received map[string]map[string]bool

func (r received) apply(ev *apipb.ReplicationEvent) {
	if ev.Resync {
		clear(r)
	}
	for _, c := range ev.Changes {
		switch x := c.Change.(type) {
		case *apipb.Change_Service:
			if r[x.Service.Name] == nil {
				r[x.Service.Name] = map[string]bool{}
			}
		case *apipb.Change_Instance:
			r[x.Instance.Service][x.Instance.Id] = true
		case *apipb.Change_InstanceDeleted:
			delete(r[x.InstanceDeleted.Service], x.InstanceDeleted.Id)
		case *apipb.Change_ServiceDeleted:
			delete(r, x.ServiceDeleted.Name)
		}
	}
}

func (r received) String() string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(r)) {
		out = append(out, fmt.Sprintf("%s%v", k, slices.Sorted(maps.Keys(r[k]))))
	}
	return fmt.Sprint(out)
}

// TestExporterConvergesUnderConcurrentChanges races catalog writes and
// export changes against the exporter's flushes: whatever the interleaving,
// the peer ends with exactly the exported services and their passing
// instances.
func TestExporterConvergesUnderConcurrentChanges(t *testing.T) {
	st := state.NewStore(0)
	var index uint64
	apply := func(cmd *statepb.Command) {
		index++
		if _, err := st.ApplyCommand(index, cmd); err != nil {
			t.Fatal(err)
		}
	}
	apply(&statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: &statepb.ForeignBundle{TrustDomain: "b.strait", Bundle: []byte("{}"), PeerName: "b"}}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := &pipe{ctx: ctx, events: make(chan *apipb.ReplicationEvent, 1024), reqs: make(chan *apipb.ReplicateRequest, 1)}
	p.reqs <- &apipb.ReplicateRequest{Msg: &apipb.ReplicateRequest_Hello{Hello: &apipb.ReplicationHello{Site: "b"}}}
	e := &replication.Exporter{Store: st, Peer: "b", TrustDomain: "b.strait", Heartbeat: time.Hour,
		Bundle: func() ([]byte, uint64, error) { return []byte("{}"), 1, nil }}
	done := make(chan error, 1)
	go func() { done <- e.Serve(ctx, p) }()

	got := received{}
	drain := func() {
		for {
			select {
			case ev := <-p.events:
				got.apply(ev)
			default:
				return
			}
		}
	}
	reg := func(svc, id string, passing bool) {
		h := apipb.Health_HEALTH_PASSING
		if !passing {
			h = apipb.Health_HEALTH_CRITICAL
		}
		apply(state.RegisterCommand(&apipb.RegisterRequest{
			Service:  &apipb.Service{Namespace: "ns", Name: svc},
			Instance: &apipb.Instance{Id: id, Address: "10.0.0.1", Health: h}}))
	}
	export := func(svc string, on bool) {
		e := &apipb.Export{Namespace: "ns", Service: svc}
		if on {
			e.To = []string{"b"}
		}
		apply(state.SetExportCommand(e))
	}
	want := received{}
	svcs := []string{"a", "b", "c"}
	exported := map[string]bool{}
	for i := range 300 {
		svc := svcs[i%3]
		id := fmt.Sprintf("%s-%d", svc, i%7)
		passing := i%5 != 0
		reg(svc, id, passing)
		if i%11 == 0 {
			exported[svc] = !exported[svc]
			export(svc, exported[svc])
		}
		drain()
	}
	// The expected final state, from the store itself.
	for _, k := range st.ExportedServices("b") {
		_, insts, _, ok := st.Service(k, true)
		if !ok {
			continue
		}
		want[k.Name] = map[string]bool{}
		for _, in := range insts {
			want[k.Name][in.Id] = true
		}
	}
	controlplanetest.WaitFor(t, 5*time.Second, func() error {
		drain()
		if got.String() != want.String() {
			return fmt.Errorf("peer has %s, want %s", got, want)
		}
		return nil
	})
	cancel()
	<-done
}
