package replication_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/replication"
)

// scripted is a replication stream that delivers fixed events, then ends.
// (A fake transport: what the fuzzer exercises is the importer's handling
// of whatever a peer sends.)
type scripted struct {
	events []*apipb.ReplicationEvent
	acks   []uint64
}

func (s *scripted) Send(m *apipb.ReplicateRequest) error {
	if a := m.GetAck(); a != nil {
		s.acks = append(s.acks, a.Version)
	}
	return nil
}

func (s *scripted) Recv() (*apipb.ReplicationEvent, error) {
	if len(s.events) == 0 {
		return nil, io.EOF
	}
	ev := s.events[0]
	s.events = s.events[1:]
	return ev, nil
}

// decodeEvents splits data into length-prefixed ReplicationEvents.
func decodeEvents(data []byte) []*apipb.ReplicationEvent {
	var out []*apipb.ReplicationEvent
	for len(data) >= 2 && len(out) < 64 {
		n := int(binary.BigEndian.Uint16(data))
		data = data[2:]
		if n > len(data) {
			n = len(data)
		}
		var ev apipb.ReplicationEvent
		if proto.Unmarshal(data[:n], &ev) == nil {
			out = append(out, &ev)
		}
		data = data[n:]
	}
	return out
}

func encodeEvents(evs ...*apipb.ReplicationEvent) []byte {
	var b []byte
	for _, ev := range evs {
		m, _ := proto.Marshal(ev)
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
		b = append(b, m...)
	}
	return b
}

func FuzzImportEvents(f *testing.F) {
	svc := &apipb.Change{Change: &apipb.Change_Service{Service: &apipb.Service{Namespace: "ns", Name: "api", Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}}}}
	in := &apipb.Change{Change: &apipb.Change_Instance{Instance: &apipb.Instance{Namespace: "ns", Service: "api", Id: "i1", Address: "10.0.0.1", Ports: map[string]uint32{"http": 80}}}}
	del := &apipb.Change{Change: &apipb.Change_InstanceDeleted{InstanceDeleted: &apipb.InstanceKey{Namespace: "ns", Service: "api", Id: "i1"}}}
	f.Add(encodeEvents(
		&apipb.ReplicationEvent{Version: 5, Resync: true, Changes: []*apipb.Change{svc}},
		&apipb.ReplicationEvent{Version: 7, Synced: true, Changes: []*apipb.Change{in}, Gateways: &apipb.GatewaySet{Addresses: []string{"10.0.0.9:8443"}}},
		&apipb.ReplicationEvent{Version: 8, Changes: []*apipb.Change{del}},
		&apipb.ReplicationEvent{Version: 8},
	))
	f.Add(encodeEvents(&apipb.ReplicationEvent{Version: 1, Synced: true}))
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := &state.FSM{Store: state.NewStore(0)}
		var index uint64
		apply := func(cmd *statepb.Command) error {
			b, err := state.Encode(cmd)
			if err != nil {
				return err
			}
			index++
			return fsm.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: b}).(state.Result).Err
		}
		if err := apply(&statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: &statepb.ForeignBundle{TrustDomain: "b.strait", Bundle: []byte("{}"), PeerName: "b"}}}); err != nil {
			t.Fatal(err)
		}
		stream := &scripted{events: decodeEvents(data)}
		calls := 0
		im := &replication.Importer{
			Peer: "b", Site: "a", Validate: api.ValidateImportedChange, MaxBatch: 3, MinBackoff: time.Nanosecond,
			RefusedBackoff: time.Nanosecond, Limits: &replication.Limits{MaxServices: 4, MaxInstances: 6, MaxBytes: 2048},
			Connect: func(context.Context) (replication.ClientStream, error) {
				if calls++; calls > 1 {
					return nil, replication.ErrPeerGone // one session only
				}
				return stream, nil
			},
			Apply: func(_ context.Context, rb *replication.Batch) error {
				b := stateBatch(rb)
				b.VirtualIPCIDR = "127.240.0.0/28"
				err := apply(state.ImportCommand(b))
				if errors.Is(err, state.ErrNotFound) {
					return replication.ErrPeerGone
				}
				return err
			},
			Bundle: func(context.Context, []byte) error { return nil },
		}
		im.Run(context.Background())

		// Whatever was committed is valid, marked with the peer, and
		// survives a snapshot.
		sums, _ := fsm.ServiceSummaries("")
		for _, sum := range sums {
			if sum.Service.Peer != "b" {
				t.Fatalf("imported service without its peer: %v", sum.Service)
			}
			c := proto.Clone(sum.Service).(*apipb.Service)
			c.Peer, c.CreateIndex, c.ModifyIndex, c.VirtualIp = "", 0, 0, ""
			if err := api.ValidateImportedChange(&apipb.Change{Change: &apipb.Change_Service{Service: c}}); err != nil {
				t.Fatalf("committed an invalid service: %v", err)
			}
		}
		for i := 1; i < len(stream.acks); i++ {
			if stream.acks[i] <= stream.acks[i-1] {
				t.Fatalf("acknowledgements go backwards: %v", stream.acks)
			}
		}
		var buf bytes.Buffer
		snap, _ := fsm.Snapshot()
		if err := snap.Persist(&sink{&buf}); err != nil {
			t.Fatal(err)
		}
		g := &state.FSM{Store: state.NewStore(0)}
		if err := g.Restore(io.NopCloser(&buf)); err != nil {
			t.Fatalf("snapshot does not restore: %v", err)
		}
		// What the store keeps of the peer's usage matches a recount, and
		// stays within the quotas.
		u := fsm.ImportUsage("b")
		if r := g.ImportUsage("b"); u != r {
			t.Fatalf("usage kept as %+v, recounted as %+v", u, r)
		}
		if u.Services > 4 || u.Instances > 6 || u.Bytes > 2048 {
			t.Fatalf("imports over quota: %+v", u)
		}
	})
}

type sink struct{ *bytes.Buffer }

func (sink) ID() string    { return "mem" }
func (sink) Cancel() error { return nil }
func (sink) Close() error  { return nil }
