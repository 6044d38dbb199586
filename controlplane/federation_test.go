package controlplane_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

func fedSite(t *testing.T, name string, clock *controlplanetest.Clock) *controlplanetest.Cluster {
	return controlplanetest.Start(t, 1, controlplanetest.Options{Site: name, BundleEndpoint: true, Clock: clock,
		Tweak: func(c *controlplane.Config) { c.BundleRefreshHint = time.Second }})
}

func TestFederationJoin(t *testing.T) {
	a, b := fedSite(t, "aws-east", nil), fedSite(t, "gcp-west", nil)
	ctx := controlplanetest.Ctx(t)
	acl, bcl := a.Client(0), b.Client(0)
	inv, err := acl.Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{Peer: "gcp"})
	if err != nil {
		t.Fatal(err)
	}
	joined, err := bcl.Federation.Join(ctx, &apipb.JoinFederationRequest{Token: inv.Token})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	if joined.Peer.Name != "aws-east" || joined.Peer.TrustDomain != "aws-east.strait" {
		t.Fatalf("B's peer %v", joined.Peer)
	}
	// Both sides hold the other's bundle, refreshed from its endpoint.
	check := func(cl *apipb.ListPeersFedResponse, name, td string) error {
		if len(cl.Peers) != 1 || cl.Peers[0].Name != name || cl.Peers[0].TrustDomain != td {
			return fmt.Errorf("peers %v, want %s (%s)", cl.Peers, name, td)
		}
		st := cl.Peers[0].Bundle
		if st.LastSuccess == nil || st.LastError != "" || st.X509Authorities != 1 || st.JwtAuthorities != 1 {
			return fmt.Errorf("peer bundle %v", st)
		}
		return nil
	}
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		la, err := acl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
		if err != nil {
			return err
		}
		if err := check(la, "gcp", "gcp-west.strait"); err != nil {
			return fmt.Errorf("A: %w", err)
		}
		lb, err := bcl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
		if err != nil {
			return err
		}
		return check(lb, "aws-east", "aws-east.strait")
	})
	// Exports name peers by their local names; unknown peers are refused.
	exp := func(to ...string) (*apipb.ExportResponse, error) {
		return acl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "payments", Service: "api", To: to}})
	}
	if _, err := exp("nobody"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "no peer named") {
		t.Fatalf("export to an unknown peer: %v", err)
	}
	if _, err := exp("gcp"); err != nil {
		t.Fatal(err)
	}
	if r, err := exp("*"); err != nil || strings.Join(r.Export.To, ",") != "*,gcp" {
		t.Fatalf("export adds peers: %v %v", r, err)
	}
	if _, err := acl.Federation.Unexport(ctx, &apipb.UnexportRequest{Namespace: "payments", Service: "api", From: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	list, err := acl.Federation.ListExports(ctx, &apipb.ListExportsRequest{})
	if err != nil || len(list.Exports) != 1 || strings.Join(list.Exports[0].To, ",") != "gcp" {
		t.Fatalf("exports after unexport --from '*': %v %v", list, err)
	}
	if _, err := acl.Federation.Unexport(ctx, &apipb.UnexportRequest{Namespace: "payments", Service: "api"}); err != nil {
		t.Fatal(err)
	}
	if _, err := acl.Federation.Unexport(ctx, &apipb.UnexportRequest{Namespace: "payments", Service: "api"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unexport twice: %v, want NotFound", err)
	}

	// The token was single-use.
	c := fedSite(t, "dc1", nil)
	_, err = c.Client(0).Federation.Join(ctx, &apipb.JoinFederationRequest{Token: inv.Token})
	if err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("reused token: %v", err)
	}
	// Unpeer is only for peer sites' servers: a token is not enough.
	if _, err := acl.Federation.Unpeer(ctx, &apipb.UnpeerRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unpeer with a management token: %v, want PermissionDenied", err)
	}
	// Removing the peering on one side removes it on both: B's server
	// calls A with its SVID, which A verifies against B's bundle.
	if _, err := bcl.Federation.Remove(ctx, &apipb.RemovePeeringRequest{Name: "aws-east"}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		l, err := acl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
		if err != nil {
			return err
		}
		if len(l.Peers) != 0 {
			return fmt.Errorf("A still lists %v", l.Peers)
		}
		return nil
	})
	if l, _ := bcl.Bundle.ListForeign(ctx, &apipb.ListForeignRequest{}); len(l.Bundles) != 0 {
		t.Fatalf("bundle kept after removing the peering: %v", l.Bundles)
	}
	if _, err := bcl.Federation.Remove(ctx, &apipb.RemovePeeringRequest{Name: "aws-east"}); status.Code(err) != codes.NotFound {
		t.Fatalf("removing twice: %v, want NotFound", err)
	}
}

func TestFederationTokenRefusals(t *testing.T) {
	clock := &controlplanetest.Clock{}
	a, b := fedSite(t, "aws-east", clock), fedSite(t, "gcp-west", clock)
	ctx := controlplanetest.Ctx(t)
	acl, bcl := a.Client(0), b.Client(0)
	mk := func(ttl time.Duration) string {
		req := &apipb.CreateInviteRequest{}
		if ttl > 0 {
			req.Ttl = durationpb.New(ttl)
		}
		inv, err := acl.Federation.CreateInvite(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return inv.Token
	}
	good := mk(0)
	join := func(tok, name string) error {
		_, err := bcl.Federation.Join(ctx, &apipb.JoinFederationRequest{Token: tok, Name: name})
		return err
	}
	tests := []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"own token", func() error {
			_, err := acl.Federation.Join(ctx, &apipb.JoinFederationRequest{Token: good})
			return err
		}(), codes.InvalidArgument, "issued by this site"},
		{"truncated", join(good[:len(good)-40], ""), codes.InvalidArgument, "malformed or truncated"},
		{"tampered", join(good[:60]+flip(good[60])+good[61:], ""), codes.InvalidArgument, "federation token"},
		{"bad name", join(good, "Bad_Name"), codes.InvalidArgument, "name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if status.Code(tt.err) != tt.code || !strings.Contains(tt.err.Error(), tt.msg) {
				t.Fatalf("%v, want %s containing %q", tt.err, tt.code, tt.msg)
			}
		})
	}
	// Expired: the token's own expiry, checked by the joiner's clock.
	short := mk(time.Minute)
	clock.Advance(2 * time.Minute)
	if err := join(short, ""); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	// A name already in use.
	c := fedSite(t, "dc1", nil) // sites started after the jump keep real time
	inv, err := c.Client(0).Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := join(good, "peer-x"); err != nil {
		t.Fatalf("join A: %v", err)
	}
	if err := join(inv.Token, "peer-x"); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("name in use: %v, want AlreadyExists", err)
	}
	// The issuer is gone: a clear error, nothing stored.
	gone := fedSite(t, "gone", nil)
	invGone, err := gone.Client(0).Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	gone.Nodes[0].Stop()
	err = join(invGone.Token, "")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "could not be reached") {
		t.Fatalf("unreachable issuer: %v", err)
	}
	// The issuing site was torn down and built again at the same address:
	// its servers now hold a CA the token's pinned bundle does not contain,
	// so the old token cannot federate with the new site.
	removed := fedSite(t, "rebuilt", nil)
	invOld, err := removed.Client(0).Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	removed.Nodes[0].Rebuild()
	err = join(invOld.Token, "")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "not signed by the token's bundle") {
		t.Fatalf("token of a rebuilt site: %v", err)
	}
	if _, err := removed.Client(0).Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{}); err != nil {
		t.Fatal(err)
	}
	l, _ := bcl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
	for _, p := range l.Peers {
		if p.Site == "gone" || p.Site == "rebuilt" {
			t.Fatalf("a failed join left a peering behind: %v", p)
		}
	}
	if l, _ := removed.Client(0).Federation.List(ctx, &apipb.ListPeersFedRequest{}); len(l.Peers) != 0 {
		t.Fatalf("the rebuilt site accepted an old token: %v", l.Peers)
	}
}

func flip(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}
