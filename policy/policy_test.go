package policy_test

import (
	"testing"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/policy"
)

func in(src, dst string, allow bool) *apipb.Intention {
	a := apipb.IntentionAction_INTENTION_ACTION_DENY
	if allow {
		a = apipb.IntentionAction_INTENTION_ACTION_ALLOW
	}
	return &apipb.Intention{Source: src, Destination: dst, Action: a}
}

func TestDecide(t *testing.T) {
	set := []*apipb.Intention{
		in("site-a/payments/web", "payments/api", true),
		in("site-a/*/*", "payments/*", false),
		in("site-a/payments/*", "payments/ledger", true),
		in("site-b/*/*", "payments/api", true),
		in("site-b/ops/*", "payments/api", false),
		in("site-c/x/y", "payments/api", true),
		in("site-c/x/y", "payments/api", false), // same specificity: deny wins
		in("site-e/*/*", "payments/api", true),
		in("site-e/ops/cron", "payments/api", true),
		in("site-f/ops/cron", "payments/api", true),
	}
	tests := []struct {
		name    string
		src     policy.Source
		dst     string
		allowed bool
	}{
		{"exact allow", policy.Source{Site: "site-a", Namespace: "payments", Service: "web"}, "payments/api", true},
		{"site-wide deny of the namespace", policy.Source{Site: "site-a", Namespace: "payments", Service: "batch"}, "payments/api", false},
		{"namespace allow beats site deny", policy.Source{Site: "site-a", Namespace: "payments", Service: "batch"}, "payments/ledger", true},
		// A source known by its site only (a connection carrying its
		// site's identity) is decided fail-closed.
		{"unknown source service: a deny naming a namespace applies", policy.Source{Site: "site-b"}, "payments/api", false},
		{"unknown source service: a deny of a site-wide rule applies", policy.Source{Site: "site-a"}, "payments/api", false},
		{"unknown source service: a site-wide allow applies", policy.Source{Site: "site-e"}, "payments/api", true},
		{"unknown source service: an allow of one service grants nothing", policy.Source{Site: "site-f"}, "payments/api", false},
		{"unknown source service: a deny of one service applies", policy.Source{Site: "site-c"}, "payments/api", false},
		{"a more specific deny", policy.Source{Site: "site-b", Namespace: "ops", Service: "cron"}, "payments/api", false},
		{"equal specificity: deny wins", policy.Source{Site: "site-c", Namespace: "x", Service: "y"}, "payments/api", false},
		{"nothing matches: default deny", policy.Source{Site: "site-d", Namespace: "a", Service: "b"}, "payments/api", false},
		{"another namespace", policy.Source{Site: "site-a", Namespace: "payments", Service: "web"}, "billing/api", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, svc, _ := policy.ParseDestination(tt.dst)
			if got, _ := policy.Decide(set, tt.src, ns, svc); got != tt.allowed {
				t.Fatalf("%s -> %s: %v, want %v", tt.src, tt.dst, got, tt.allowed)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for src, want := range map[string]string{"site-a": "site-a/*/*", "site-a/payments": "site-a/payments/*", "site-a/payments/web": "site-a/payments/web"} {
		if got, err := policy.Normalize(src); err != nil || got != want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", src, got, err, want)
		}
	}
	for _, bad := range []string{"", "*/a/b", "site-a/*/web", "Site/a/b", "a/b/c/d"} {
		if _, err := policy.Normalize(bad); err == nil {
			t.Errorf("Normalize(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"api", "payments/", "*/api", "payments/API"} {
		if _, _, err := policy.ParseDestination(bad); err == nil {
			t.Errorf("ParseDestination(%q) accepted", bad)
		}
	}
}

// TestReason: an explicit deny is named as such, distinct from the
// default deny, and the allowing intention is named too.
func TestReason(t *testing.T) {
	set := []*apipb.Intention{in("aws-east/*/*", "shop/api", false), in("gcp-west/*/*", "shop/*", true)}
	tests := []struct {
		name string
		src  policy.Source
		want string
	}{
		{"explicit deny", policy.Source{Site: "aws-east"}, "denied by intention deny aws-east/*/* -> shop/api"},
		{"allow", policy.Source{Site: "gcp-west"}, "allowed by intention allow gcp-west/*/* -> shop/*"},
		{"default deny", policy.Source{Site: "dc1"}, "no intention allows dc1/?/? to reach shop/api"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, m := policy.Decide(set, tt.src, "shop", "api")
			if got := policy.Reason(ok, m, tt.src.String(), "shop/api"); got != tt.want {
				t.Fatalf("%q, want %q", got, tt.want)
			}
		})
	}
}
