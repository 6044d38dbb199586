package replication_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/peeraddr"
	"github.com/straitmesh/strait/federation/replication"
)

// maxPeerGateways is the cap on the gateway addresses a peer announces
// (peeraddr.MaxAddresses, the audit's L1).
const maxPeerGateways = peeraddr.MaxAddresses

// FuzzImportGateways: the gateway addresses a peer announces (on its
// resync, then on a later change) are what its gateways and servers get
// dialled at. Whatever the peer sends, the importer does not panic, the
// addresses it stores are ones the peer sent (never invented or mixed
// between announcements), they survive a snapshot, and they are valid and capped.
func FuzzImportGateways(f *testing.F) {
	f.Add("10.0.0.9:8443\n10.0.0.10:8443", "10.0.0.11:8443", true)
	f.Add("not-an-address\n127.0.0.1:0\n"+strings.Repeat("a", 1000)+":1", "", false)
	f.Add("[fe80::1%eth0]:8443\n0.0.0.0:443\n127.0.0.1:18701", "\n\n", true)
	f.Add(strings.Repeat("10.1.1.1:1\n", 40), strings.Repeat("x:99999\n", 3), true)
	f.Fuzz(func(t *testing.T, first, second string, delta bool) {
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
		split := func(s string) []string {
			if s == "" {
				return nil
			}
			return strings.Split(s, "\n")
		}
		sets := [][]string{split(first)}
		svc := &apipb.Change{Change: &apipb.Change_Service{Service: &apipb.Service{Namespace: "ns", Name: "api", Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}}}}
		events := []*apipb.ReplicationEvent{{Version: 1, Resync: true, Synced: true, Changes: []*apipb.Change{svc}, Gateways: &apipb.GatewaySet{Addresses: sets[0]}}}
		if delta {
			sets = append(sets, split(second))
			events = append(events, &apipb.ReplicationEvent{Version: 2, Gateways: &apipb.GatewaySet{Addresses: sets[1]}})
		}
		stream := &scripted{events: events}
		calls := 0
		im := &replication.Importer{
			Peer: "b", Site: "a", Validate: api.ValidateImportedChange, MinBackoff: time.Nanosecond,
			Connect: func(context.Context) (replication.ClientStream, error) {
				if calls++; calls > 1 {
					return nil, replication.ErrPeerGone
				}
				return stream, nil
			},
			Apply: func(_ context.Context, b *replication.Batch) error {
				err := apply(state.ImportCommand(stateBatch(b)))
				if errors.Is(err, state.ErrNotFound) {
					return replication.ErrPeerGone
				}
				return err
			},
			Bundle: func(context.Context, []byte) error { return nil },
		}
		im.Run(context.Background())

		imp, ok := fsm.Store.PeerImport("b")
		if !ok {
			return // nothing committed (a refused stream)
		}
		stored := imp.Gateways
		if len(stored) > 0 && !slices.ContainsFunc(sets, func(s []string) bool { return isSubset(stored, s) }) {
			t.Fatalf("stored gateways %q are not from one announcement of the peer %q", stored, sets)
		}
		if len(stored) > maxPeerGateways {
			t.Fatalf("stored %d gateways (cap %d)", len(stored), maxPeerGateways)
		}
		for _, g := range stored {
			if err := validGateway(g); err != nil {
				t.Fatalf("stored gateway %q: %v", g, err)
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
		if r, _ := g.Store.PeerImport("b"); !slices.Equal(r.GetGateways(), stored) {
			t.Fatalf("gateways after a snapshot %q, before %q", r.GetGateways(), stored)
		}
	})
}

func isSubset(a, b []string) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// validGateway is the rule L1 asks for: an IP (no zone, not unspecified)
// and a port 1-65535.
func validGateway(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" || ip.IsUnspecified() {
		return errors.New("not an IP address")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return errors.New("port outside 1-65535")
	}
	return nil
}
