package state_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

func bootstrapSite(t *testing.T, s *state.Store, site string) {
	t.Helper()
	cmd := &statepb.Command{Cmd: &statepb.Command_Bootstrap{Bootstrap: &statepb.Bootstrap{
		Site: site, TrustDomain: site + ".strait", Root: &statepb.CARoot{Certificate: []byte("root")}}}}
	if _, err := s.ApplyCommand(1, cmd); err != nil {
		t.Fatal(err)
	}
}

// invite stores a federation invite for peer and returns its secret hash.
func invite(t *testing.T, s *state.Store, secret, peer string, expires time.Time) []byte {
	t.Helper()
	h := state.HashSecret(secret)
	rec := state.NewTokenRecord(&apipb.Token{
		AccessorId: "acc-" + secret, Kind: apipb.TokenKind_TOKEN_KIND_FEDERATION, MaxUses: 1, ExpireTime: timestamppb.New(expires)}, h[:], peer)
	if _, err := s.ApplyCommand(s.Index()+1, &statepb.Command{Cmd: &statepb.Command_CreateToken{CreateToken: rec}}); err != nil {
		t.Fatal(err)
	}
	return h[:]
}

func addPeer(name, td string, hash []byte, now time.Time) *statepb.Command {
	return &statepb.Command{Time: timestamppb.New(now), Cmd: &statepb.Command_AddPeer{AddPeer: &statepb.AddPeer{
		InviteSecretHash: hash,
		Peer:             &statepb.ForeignBundle{TrustDomain: td, Bundle: []byte("{}"), PeerName: name, PeerSite: name},
	}}}
}

func uses(s *state.Store, secret string) uint32 {
	h := state.HashSecret(secret)
	rec, _ := s.TokenBySecret(h)
	return rec.Token.Uses
}

// TestAddPeerRaceHasOneWinner: two sites redeeming two invites at once
// under the same name (or for the same trust domain) cannot both become
// peers: the state machine decides, and the loser's invite stays unused.
func TestAddPeerRaceHasOneWinner(t *testing.T) {
	now := time.Now()
	for _, tt := range []struct{ name, nameB, tdA, tdB string }{
		{"same name", "dup7", "race7-a.strait", "race7-b.strait"},
		{"same trust domain", "peer-b", "race8.strait", "race8.strait"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := state.NewStore(0)
			bootstrapSite(t, s, "aws-east")
			ha := invite(t, s, "a", "", now.Add(time.Hour))
			hb := invite(t, s, "b", "", now.Add(time.Hour))
			cmds := []*statepb.Command{addPeer("dup7", tt.tdA, ha, now), addPeer(tt.nameB, tt.tdB, hb, now)}
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i, c := range cmds {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = s.ApplyCommand(uint64(10+i), c)
				}()
			}
			wg.Wait()
			won := 0
			for i, err := range errs {
				secret := []string{"a", "b"}[i]
				switch {
				case err == nil:
					won++
					if uses(s, secret) != 1 {
						t.Errorf("winner's invite uses %d, want 1", uses(s, secret))
					}
				case errors.Is(err, state.ErrConflict):
					if uses(s, secret) != 0 {
						t.Errorf("loser's invite was consumed (%d uses)", uses(s, secret))
					}
				default:
					t.Errorf("accept %d: %v", i, err)
				}
			}
			if won != 1 || len(s.ForeignBundles()) != 1 {
				t.Fatalf("%d winners, %d peerings: %v", won, len(s.ForeignBundles()), errs)
			}
		})
	}
}

func TestAddPeerRefusals(t *testing.T) {
	now := time.Now()
	s := state.NewStore(0)
	bootstrapSite(t, s, "aws-east")
	if _, err := s.ApplyCommand(2, &statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: &statepb.ForeignBundle{
		TrustDomain: "plain.example", Bundle: []byte("{}")}}}); err != nil {
		t.Fatal(err)
	}
	forNew := invite(t, s, "new", "newpartner", now.Add(time.Hour))
	expired := invite(t, s, "old", "", now.Add(-time.Minute))
	mgmt := state.HashSecret("mgmt")
	if _, err := s.ApplyCommand(s.Index()+1, &statepb.Command{Cmd: &statepb.Command_CreateToken{CreateToken: state.NewTokenRecord(&apipb.Token{AccessorId: "m", Kind: apipb.TokenKind_TOKEN_KIND_MANAGEMENT}, mgmt[:], "")}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cmd  *statepb.Command
		want error
	}{
		{"invite for another name", addPeer("gcp-west", "evil2.strait", forNew, now), state.ErrConflict},
		{"this site's own name", addPeer("aws-east", "evil.strait", forNew, now), state.ErrConflict},
		{"this site's own trust domain", addPeer("self", "aws-east.strait", nil, now), state.ErrConflict},
		{"a plain foreign bundle's trust domain", addPeer("plain", "plain.example", nil, now), state.ErrConflict},
		{"expired invite", addPeer("late", "late.strait", expired, now), state.ErrTokenInvalid},
		{"not a federation token", addPeer("sneaky", "sneaky.strait", mgmt[:], now), state.ErrTokenInvalid},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.ApplyCommand(uint64(100+i), tt.cmd); !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			if n := len(s.ForeignBundles()); n != 1 {
				t.Fatalf("%d foreign bundles after a refused AddPeer", n)
			}
		})
	}
	if uses(s, "new") != 0 {
		t.Fatal("a refused AddPeer consumed the invite")
	}
	if _, err := s.ApplyCommand(200, addPeer("newpartner", "partner.strait", forNew, now)); err != nil {
		t.Fatalf("the invited peer: %v", err)
	}
}

// TestPeeringRemovalDropsItsIntentions: intentions whose source is a
// removed peer go with it, so a later peer of the same name inherits
// nothing; other intentions stay.
func TestPeeringRemovalDropsItsIntentions(t *testing.T) {
	now := time.Now()
	s := state.NewStore(0)
	bootstrapSite(t, s, "aws-east")
	if _, err := s.ApplyCommand(2, addPeer("gcp-west", "gcp-west.strait", nil, now)); err != nil {
		t.Fatal(err)
	}
	allow := func(src string) *statepb.Command {
		return state.SetIntentionCommand(&apipb.Intention{
			Source: src, Destination: "shop/*", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW})
	}
	for i, src := range []string{"gcp-west/*/*", "gcp-west/web/front", "gcp-west-2/*/*", "dc1/*/*"} {
		if _, err := s.ApplyCommand(uint64(3+i), allow(src)); err != nil {
			t.Fatal(err)
		}
	}
	changed := s.MeshChanged()
	del := &statepb.Command{Cmd: &statepb.Command_DeleteForeignBundle{DeleteForeignBundle: &statepb.DeleteForeignBundle{TrustDomain: "gcp-west.strait"}}}
	if _, err := s.ApplyCommand(10, del); err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, in := range s.Intentions() {
		left = append(left, in.Source)
	}
	if len(left) != 2 || left[0] != "dc1/*/*" || left[1] != "gcp-west-2/*/*" {
		t.Fatalf("intentions after removing gcp-west: %v", left)
	}
	select {
	case <-changed:
	default:
		t.Fatal("mesh watchers not woken")
	}
}

// TestSetForeignKeepsPeerings: a plain bundle update cannot replace a
// peering (it would orphan the peer's imports), nor create a second peer
// of the same name.
func TestSetForeignKeepsPeerings(t *testing.T) {
	now := time.Now()
	s := state.NewStore(0)
	bootstrapSite(t, s, "aws-east")
	if _, err := s.ApplyCommand(2, addPeer("gcp-west", "gcp-west.strait", nil, now)); err != nil {
		t.Fatal(err)
	}
	set := func(f *statepb.ForeignBundle) error {
		_, err := s.ApplyCommand(s.Index()+1, &statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: f}})
		return err
	}
	if err := set(&statepb.ForeignBundle{TrustDomain: "gcp-west.strait", Bundle: []byte("{}")}); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("plain bundle over a peering: %v", err)
	}
	if err := set(&statepb.ForeignBundle{TrustDomain: "other.strait", Bundle: []byte("{}"), PeerName: "gcp-west"}); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("second peer of the same name: %v", err)
	}
	f, _ := s.ForeignBundle("gcp-west.strait")
	if f.PeerName != "gcp-west" {
		t.Fatalf("peering changed: %v", f)
	}
	// A refresh of the peering itself goes through.
	if err := set(&statepb.ForeignBundle{TrustDomain: "gcp-west.strait", Bundle: []byte("{ }"), Sequence: 2, PeerName: "gcp-west"}); err != nil {
		t.Fatal(err)
	}
}
