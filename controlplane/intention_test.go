package controlplane_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

func TestIntentionsAPI(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{InMemoryRaft: true})
	cl := c.Client(c.Follower()) // writes are forwarded to the leader
	ctx := controlplanetest.Ctx(t)
	set := func(src, dst string, a apipb.IntentionAction) (*apipb.SetIntentionResponse, error) {
		return cl.Intentions.Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{Source: src, Destination: dst, Action: a}})
	}
	allow, deny := apipb.IntentionAction_INTENTION_ACTION_ALLOW, apipb.IntentionAction_INTENTION_ACTION_DENY
	r, err := set("site-a/payments", "payments/api", allow)
	if err != nil {
		t.Fatal(err)
	}
	if r.Intention.Source != "site-a/payments/*" || r.Intention.CreateIndex == 0 {
		t.Fatalf("stored %v: want the normalized source and an index", r.Intention)
	}
	if _, err := set("site-a/payments/batch", "payments/api", deny); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct{ src, dst, field string }{
		{"*/x/y", "payments/api", "intention.source"},
		{"site-a", "api", "intention.destination"},
		{"Site-A", "payments/api", "intention.source"},
	} {
		if _, err := set(bad.src, bad.dst, allow); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), bad.field) {
			t.Errorf("%s -> %s: %v, want InvalidArgument naming %s", bad.src, bad.dst, err, bad.field)
		}
	}
	check := func(src, dst string) bool {
		t.Helper()
		r, err := cl.Intentions.Check(ctx, &apipb.CheckIntentionRequest{Source: src, Destination: dst})
		if err != nil {
			t.Fatal(err)
		}
		return r.Allowed
	}
	controlplanetest.WaitFor(t, 5*time.Second, func() error { // the follower catches up
		if l, _ := cl.Intentions.List(ctx, &apipb.ListIntentionsRequest{}); len(l.GetIntentions()) != 2 {
			return status.Error(codes.Unavailable, "not yet")
		}
		return nil
	})
	if !check("site-a/payments/web", "payments/api") || check("site-a/payments/batch", "payments/api") || check("site-b/payments/web", "payments/api") {
		t.Fatal("check disagrees with the intentions")
	}
	if _, err := cl.Intentions.Delete(ctx, &apipb.DeleteIntentionRequest{Source: "site-a/payments", Destination: "payments/api"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Intentions.Delete(ctx, &apipb.DeleteIntentionRequest{Source: "site-a/payments", Destination: "payments/api"}); status.Code(err) != codes.NotFound {
		t.Fatalf("delete twice: %v", err)
	}
	controlplanetest.WaitFor(t, 5*time.Second, func() error {
		if check("site-a/payments/web", "payments/api") {
			return status.Error(codes.Unavailable, "still allowed")
		}
		return nil
	})
	// Reading needs a token; writing needs a management token.
	readTok, err := c.Client(0).ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_READ})
	if err != nil {
		t.Fatal(err)
	}
	ro := c.ClientWithToken(0, readTok.Secret)
	if _, err := ro.Intentions.List(ctx, &apipb.ListIntentionsRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Intentions.Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{Source: "site-a", Destination: "payments/api", Action: allow}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("set with a read token: %v", err)
	}
}
