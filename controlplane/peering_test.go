package controlplane_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/federation/token"
)

// inviteSecret issues an invite on c for peer and returns its secret, as
// a joining site's server would present it.
func inviteSecret(t *testing.T, c *controlplanetest.Cluster, peer string) string {
	t.Helper()
	inv, err := c.Client(c.Leader()).Federation.CreateInvite(controlplanetest.Ctx(t), &apipb.CreateInviteRequest{Peer: peer})
	if err != nil {
		t.Fatal(err)
	}
	dec, _, err := token.Decode(inv.Token, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return dec.Secret
}

// acceptAs builds the Accept request a joining site with this trust
// domain and bundle would send (no server is reached through it).
func acceptAs(site string, b *apipb.GetBundleResponse, requested string) *apipb.AcceptRequest {
	return &apipb.AcceptRequest{Site: site, TrustDomain: b.TrustDomain, Bundle: b.Bundle,
		BundleEndpointUrl: "https://127.0.0.1:1/", Addresses: []string{"127.0.0.1:1"}, RequestedName: requested}
}

func siteBundle(t *testing.T, c *controlplanetest.Cluster) *apipb.GetBundleResponse {
	t.Helper()
	b, err := c.Client(0).Bundle.GetBundle(controlplanetest.Ctx(t), &apipb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tokenUses(t *testing.T, c *controlplanetest.Cluster) map[string]uint32 {
	t.Helper()
	l, err := c.Client(0).ACL.ListTokens(controlplanetest.Ctx(t), &apipb.ListTokensRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint32{}
	for _, tok := range l.Tokens {
		if tok.Kind == apipb.TokenKind_TOKEN_KIND_FEDERATION {
			out[tok.Description] += tok.Uses
		}
	}
	return out
}

// TestConcurrentAcceptsOneWinner: two sites redeeming two invites for the
// same peer name at the same time, through different servers of a
// three-server site, end with one peering of that name (M3): uniqueness is
// decided in the state machine, and the loser's invite stays unused.
func TestConcurrentAcceptsOneWinner(t *testing.T) {
	a := controlplanetest.Start(t, 3, controlplanetest.Options{Site: "aws-east", BundleEndpoint: true})
	b, c := fedSite(t, "race-b", nil), fedSite(t, "race-c", nil)
	bundles := []*apipb.GetBundleResponse{siteBundle(t, b), siteBundle(t, c)}
	ctx := controlplanetest.Ctx(t)
	for round := range 4 {
		name := fmt.Sprintf("dup%d", round)
		secrets := []string{inviteSecret(t, a, name), inviteSecret(t, a, name)}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range 2 {
			cl := a.ClientWithToken(i+1, secrets[i])
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = cl.Federation.Accept(ctx, acceptAs([]string{"race-b", "race-c"}[i], bundles[i], name))
			}()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			if err == nil {
				won++
			} else if code := status.Code(err); code != codes.AlreadyExists && code != codes.FailedPrecondition {
				t.Fatalf("round %d: the losing accept: %v", round, err)
			}
		}
		l, err := a.Client(0).Federation.List(ctx, &apipb.ListPeersFedRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if won != 1 || len(l.Peers) != 1 {
			t.Fatalf("round %d: %d accepts won, %d peers named %s: %v", round, won, len(l.Peers), name, errs)
		}
		if u := tokenUses(t, a)["federation invite "+name]; u != 1 {
			t.Fatalf("round %d: invites for %s used %d times in all, want 1 (the loser's stays unused)", round, name, u)
		}
		// Free the trust domains for the next round.
		if _, err := a.Client(0).Federation.Remove(ctx, &apipb.RemovePeeringRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPeerNameIsTheInvitations: the invite decides the peer's name (M2):
// a joiner asking for another (a removed peer's) is refused without using
// the invite, this site's own name is refused, and a removed peer's
// intentions are gone, so a later peer under its name inherits nothing.
func TestPeerNameIsTheInvitations(t *testing.T) {
	a := fedSite(t, "aws-east", nil)
	b, evil := fedSite(t, "gcp-west", nil), fedSite(t, "evil2", nil)
	ctx := controlplanetest.Ctx(t)
	acl := a.Client(0)

	// gcp-west joins properly and is granted shop/*; then it is removed.
	inv, err := acl.Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{Peer: "gcp-west"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client(0).Federation.Join(ctx, &apipb.JoinFederationRequest{Token: inv.Token}); err != nil {
		t.Fatal(err)
	}
	allow := &apipb.Intention{Source: "gcp-west", Destination: "shop/*", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW}
	if _, err := acl.Intentions.Set(ctx, &apipb.SetIntentionRequest{Intention: allow}); err != nil {
		t.Fatal(err)
	}
	if _, err := acl.Federation.Remove(ctx, &apipb.RemovePeeringRequest{Name: "gcp-west"}); err != nil {
		t.Fatal(err)
	}
	chk, err := acl.Intentions.Check(ctx, &apipb.CheckIntentionRequest{Source: "gcp-west", Destination: "shop/api"})
	if err != nil || chk.Allowed {
		t.Fatalf("a removed peer's intention still decides: %v %v", chk, err)
	}
	if l, _ := acl.Intentions.List(ctx, &apipb.ListIntentionsRequest{}); len(l.Intentions) != 0 {
		t.Fatalf("intentions of the removed peer kept: %v", l.Intentions)
	}

	// An invite for newpartner, redeemed by evil2 asking to be gcp-west.
	secret := inviteSecret(t, a, "newpartner")
	evilCl := a.ClientWithToken(0, secret)
	eb := siteBundle(t, evil)
	_, err = evilCl.Federation.Accept(ctx, acceptAs("evil2", eb, "gcp-west"))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `issued for a peer named "newpartner"`) {
		t.Fatalf("accept under another name: %v", err)
	}
	if u := tokenUses(t, a)["federation invite newpartner"]; u != 0 {
		t.Fatalf("the refused accept used the invite (%d)", u)
	}
	if r, err := evilCl.Federation.Accept(ctx, acceptAs("evil2", eb, "")); err != nil || r.Name != "newpartner" {
		t.Fatalf("accept with the invitation's name: %v %v", r, err)
	}

	// This site's own name: refused when inviting, and when a joiner's
	// site name would become it.
	if _, err := acl.Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{Peer: "aws-east"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("invite for the own name: %v", err)
	}
	other := fedSite(t, "aws-east-2", nil)
	_, err = a.ClientWithToken(0, inviteSecret(t, a, "")).Federation.Accept(ctx, acceptAs("aws-east", siteBundle(t, other), ""))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "own name") || !strings.Contains(err.Error(), "--peer") {
		t.Fatalf("a joiner named like this site: %v", err)
	}
}

// TestAcceptRefusesBadPeerAddresses: the addresses a joiner announces are
// checked before anything is stored (L1).
func TestAcceptRefusesBadPeerAddresses(t *testing.T) {
	a, b := fedSite(t, "aws-east", nil), fedSite(t, "gcp-west", nil)
	ctx := controlplanetest.Ctx(t)
	bb := siteBundle(t, b)
	many := make([]string, 17)
	for i := range many {
		many[i] = fmt.Sprintf("10.0.0.%d:8443", i+1)
	}
	tests := []struct {
		name     string
		gateways []string
		msg      string
	}{
		{"garbage", []string{"not-an-address"}, "not host:port"},
		{"port zero", []string{"127.0.0.1:0"}, "outside 1-65535"},
		{"unspecified", []string{"0.0.0.0:8443"}, "unspecified"},
		{"metadata service", []string{"169.254.169.254:80"}, "link-local"},
		{"huge", []string{strings.Repeat("a", 100_000) + ":1"}, "at most 261"},
		{"too many", many, "at most 16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := acceptAs("gcp-west", bb, "")
			req.Gateways = tt.gateways
			_, err := a.ClientWithToken(0, inviteSecret(t, a, "")).Federation.Accept(ctx, req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("%v, want InvalidArgument containing %q", err, tt.msg)
			}
		})
	}
	if l, _ := a.Client(0).Federation.List(ctx, &apipb.ListPeersFedRequest{}); len(l.Peers) != 0 {
		t.Fatalf("refused accepts stored peers: %v", l.Peers)
	}
}
