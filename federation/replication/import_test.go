package replication_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/replication"
)

// fakePeer is the peer's side of replication streams: each session plays
// the next script, which sends events until it returns; the stream then
// ends. (A fake transport: what is under test is the importer and the
// state machine behind it.)
type fakePeer struct {
	scripts []func(send func(*apipb.ReplicationEvent) bool)
	// ended is the importer's last error as each session after the first
	// opened: why the one before it ended.
	ended []string
}

type fakeStream struct {
	ctx    context.Context
	events chan *apipb.ReplicationEvent
}

func (s *fakeStream) Send(*apipb.ReplicateRequest) error { return nil }
func (s *fakeStream) Recv() (*apipb.ReplicationEvent, error) {
	select {
	case ev, ok := <-s.events:
		if !ok {
			return nil, io.EOF
		}
		return ev, nil
	case <-s.ctx.Done():
		return nil, io.EOF
	}
}

// importer returns an importer of peer "b" committing into fsm through the
// same check and command the servers use, with stats in reg.
func testImporter(t *testing.T, fsm *state.FSM, peer *fakePeer, reg *replication.Registry, lim *replication.Limits) *replication.Importer {
	var index uint64 = 100
	var mu sync.Mutex
	session := 0
	return &replication.Importer{
		Peer: "b", Site: "a", Validate: api.ValidateImportedChange, Limits: lim,
		MinBackoff: time.Millisecond, RefusedBackoff: time.Millisecond, Heartbeat: time.Hour,
		Stats:      reg.Import("b"),
		WithoutVIP: func() int { return fsm.ImportUsage("b").WithoutVIP },
		Size:       state.ImportedSize,
		Connect: func(ctx context.Context) (replication.ClientStream, error) {
			mu.Lock()
			defer mu.Unlock()
			if session > 0 {
				st := &apipb.ImportStatus{}
				reg.Import("b").Fill(st)
				peer.ended = append(peer.ended, st.LastError)
			}
			if session >= len(peer.scripts) {
				return nil, replication.ErrPeerGone
			}
			script := peer.scripts[session]
			session++
			st := &fakeStream{ctx: ctx, events: make(chan *apipb.ReplicationEvent)}
			go func() {
				defer close(st.events)
				script(func(ev *apipb.ReplicationEvent) bool {
					select {
					case st.events <- ev:
						return true
					case <-ctx.Done():
						return false
					}
				})
			}()
			return st, nil
		},
		Apply: func(_ context.Context, rb *replication.Batch) error {
			b := stateBatch(rb)
			b.VirtualIPCIDR = "127.240.0.0/16"
			if err := fsm.CheckImport(b); err != nil {
				return err
			}
			data, err := state.Encode(state.ImportCommand(b))
			if err != nil {
				return err
			}
			mu.Lock()
			index++
			i := index
			mu.Unlock()
			return fsm.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: data}).(state.Result).Err
		},
		Bundle: func(context.Context, []byte) error { return nil },
	}
}

// stateBatch is the store's import batch of b, as the server makes it.
func stateBatch(b *replication.Batch) *state.ImportBatch {
	out := &state.ImportBatch{Peer: b.Peer, Version: b.Version, Resync: b.Resync, Changes: b.Changes, Gateways: b.Gateways}
	if l := b.Limits; l != nil {
		out.Limits = &statepb.ImportLimits{MaxServices: l.MaxServices, MaxInstances: l.MaxInstances, MaxBytes: l.MaxBytes}
	}
	return out
}

func newPeerFSM(t *testing.T) *state.FSM {
	t.Helper()
	fsm := &state.FSM{Store: state.NewStore(0)}
	data, _ := state.Encode(&statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: &statepb.ForeignBundle{TrustDomain: "b.strait", Bundle: []byte("{}"), PeerName: "b"}}})
	if r := fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data}).(state.Result); r.Err != nil {
		t.Fatal(r.Err)
	}
	return fsm
}

func services(n int, prefix string, instances int) []*apipb.Change {
	var out []*apipb.Change
	for i := range n {
		name := fmt.Sprintf("%s%d", prefix, i)
		out = append(out, &apipb.Change{Change: &apipb.Change_Service{Service: &apipb.Service{Namespace: "ns", Name: name, Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}}}})
		for j := range instances {
			out = append(out, &apipb.Change{Change: &apipb.Change_Instance{Instance: &apipb.Instance{Namespace: "ns", Service: name, Id: fmt.Sprintf("i%d", j), Address: "10.0.0.1", Ports: map[string]uint32{"http": 80}}}})
		}
	}
	return out
}

// resync sends a full catalog in events of at most per changes.
func resync(version uint64, changes []*apipb.Change, per int) func(send func(*apipb.ReplicationEvent) bool) {
	return func(send func(*apipb.ReplicationEvent) bool) {
		first := true
		for len(changes) > 0 || first {
			n := min(per, len(changes))
			ev := &apipb.ReplicationEvent{Version: version, Resync: first, Changes: changes[:n], Synced: n == len(changes)}
			changes, first = changes[n:], false
			if !send(ev) {
				return
			}
		}
	}
}

func refusals(t *testing.T, reg *replication.Registry) string {
	t.Helper()
	r := prometheus.NewRegistry()
	r.MustRegister(reg)
	var out []string
	mfs, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "strait_federation_import_refusals_total" {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == "reason" {
					out = append(out, fmt.Sprintf("%s=%g", l.GetValue(), m.GetCounter().GetValue()))
				}
			}
		}
	}
	return strings.Join(out, ",")
}

// TestImporterRefusesOverQuota: a resync or a delta that would take the
// peer's imports over a quota is refused whole, the stream is dropped
// with an error naming the quota, the refusal is counted, and the imports
// stay as they were.
func TestImporterRefusesOverQuota(t *testing.T) {
	lim := &replication.Limits{MaxServices: 4, MaxInstances: 8, MaxBytes: 4 << 10}
	for _, tc := range []struct {
		name, reason, key string
		next              func(send func(*apipb.ReplicationEvent) bool)
	}{
		{"resync over services", state.QuotaServices, "peer_max_services", resync(20, services(5, "x", 0), 2)},
		{"resync over instances", state.QuotaInstances, "peer_max_instances", resync(20, services(3, "x", 3), 4)},
		{"resync over bytes", state.QuotaBytes, "peer_max_import_bytes", bigResync()},
		{"resync messages over twice the bytes quota", replication.RefusedResyncBytes, "", func(send func(*apipb.ReplicationEvent) bool) {
			// Deletions count towards no quota, but are buffered.
			var dels []*apipb.Change
			for i := range 1000 {
				dels = append(dels, &apipb.Change{Change: &apipb.Change_ServiceDeleted{ServiceDeleted: &apipb.ServiceKey{Namespace: "ns", Name: fmt.Sprintf("gone-%d", i)}}})
			}
			resync(20, dels, 10)(send)
		}},
		{"delta over services", state.QuotaServices, "peer_max_services", func(send func(*apipb.ReplicationEvent) bool) {
			resync(20, services(2, "s", 1), 100)(send)
			send(&apipb.ReplicationEvent{Version: 21, Changes: services(3, "x", 0)})
			for send(&apipb.ReplicationEvent{Version: 21}) { // heartbeats until dropped
				time.Sleep(5 * time.Millisecond) // the pace of a fake peer, not a wait for a condition
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsm := newPeerFSM(t)
			peer := &fakePeer{scripts: []func(func(*apipb.ReplicationEvent) bool){resync(10, services(2, "s", 1), 100), tc.next}}
			reg := replication.NewRegistry(nil, nil)
			im := testImporter(t, fsm, peer, reg, lim)
			ctx, cancel := context.WithTimeout(controlplanetest.Ctx(t), 30*time.Second)
			defer cancel()
			im.Run(ctx)
			if ctx.Err() != nil {
				t.Fatal("importer did not finish")
			}
			if u := fsm.ImportUsage("b"); u.Services != 2 || u.Instances != 2 {
				t.Fatalf("imports after the refusal %+v, want the first resync's 2 services and 2 instances", u)
			}
			if _, _, _, ok := fsm.Service(state.ServiceKey{Peer: "b", Namespace: "ns", Name: "x0"}, false); ok {
				t.Fatal("part of a refused catalog was committed")
			}
			if got, want := refusals(t, reg), tc.reason+"=1"; got != want {
				t.Fatalf("refusals %q, want %q", got, want)
			}
			if len(peer.ended) != 2 {
				t.Fatalf("sessions ended %q", peer.ended)
			}
			if msg := peer.ended[1]; !strings.Contains(msg, "refused the peer's catalog") || !strings.Contains(msg, tc.key) || !strings.Contains(msg, "earlier imports are kept") {
				t.Fatalf("last error %q does not name %q", msg, tc.key)
			}
			t.Logf("stream dropped: %s", peer.ended[1])
		})
	}
}

// bigResync sends 4 services with one instance of about 4 KiB each:
// within the counts, over a 4 KiB bytes quota.
func bigResync() func(send func(*apipb.ReplicationEvent) bool) {
	changes := services(4, "x", 1)
	for _, c := range changes {
		if in := c.GetInstance(); in != nil {
			in.Meta = map[string]string{}
			for i := range 64 {
				in.Meta[fmt.Sprintf("k%02d", i)] = strings.Repeat("v", 60)
			}
		}
	}
	return resync(20, changes, 1)
}

// TestImporterBoundsResyncTime: a peer that starts a resync and then only
// keeps the stream alive, never finishing it, is dropped once the resync
// is overdue, and the refusal is counted.
func TestImporterBoundsResyncTime(t *testing.T) {
	fsm := newPeerFSM(t)
	stall := func(send func(*apipb.ReplicationEvent) bool) {
		if !send(&apipb.ReplicationEvent{Version: 5, Resync: true, Changes: services(1, "s", 1)}) {
			return
		}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for range tick.C {
			if !send(&apipb.ReplicationEvent{Version: 5}) { // heartbeats, forever
				return
			}
		}
	}
	peer := &fakePeer{scripts: []func(func(*apipb.ReplicationEvent) bool){stall}}
	reg := replication.NewRegistry(nil, nil)
	im := testImporter(t, fsm, peer, reg, nil)
	im.Heartbeat, im.ResyncTimeout = 50*time.Millisecond, 300*time.Millisecond
	ctx, cancel := context.WithTimeout(controlplanetest.Ctx(t), 30*time.Second)
	defer cancel()
	start := time.Now()
	im.Run(ctx)
	if ctx.Err() != nil {
		t.Fatal("a resync that never ends held the stream for 30s")
	}
	if got := refusals(t, reg); got != replication.RefusedResyncTimeout+"=1" {
		t.Fatalf("refusals %q", got)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("dropped after %s, before the timeout", d)
	}
	if u := fsm.ImportUsage("b"); u.Services != 0 {
		t.Fatalf("an unfinished resync was committed: %+v", u)
	}
}
