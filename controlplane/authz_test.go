package controlplane_test

import (
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/trust/jointoken"
)

func health(t *testing.T, cl *apiclient.Client, ns, svc, id string) apipb.Health {
	t.Helper()
	r, err := cl.Catalog.GetService(controlplanetest.Ctx(t), &apipb.GetServiceRequest{Namespace: ns, Name: svc})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range r.Instances {
		if in.Id == id {
			return in.Health
		}
	}
	t.Fatalf("%s/%s has no instance %s", ns, svc, id)
	return 0
}

// gatewayClient joins a gateway to c and returns a client presenting its
// SVID, as the gateway's heartbeats do.
func gatewayClient(t *testing.T, c *controlplanetest.Cluster, name string) *apiclient.Client {
	t.Helper()
	gw, err := apiclient.Dial(apiclient.Config{Addr: c.Nodes[0].Addr, CAFile: controlplane.CAFile(c.Nodes[0].Dir), Identity: gatewayIdentity(t, c, name)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	return gw
}

// TestLateGatewayStaysPassing (M6, issue 15 B1): a gateway whose first
// heartbeat comes more than GatewayTTL after its site's leader took office
// stays passing over several TTLs of heartbeats. It used to be registered
// without a beat, so the TTL tracker expired it on its next scan, again
// after every re-registration.
//
// The servers' clock is advanced instead of waiting: each step moves it
// by a third of GatewayTTL and heartbeats, then waits for a tracker scan
// that happened after the move (a sentinel instance whose short TTL that
// move expires is marked critical by the same scan that would mark the
// gateway), and checks the gateway.
func TestLateGatewayStaysPassing(t *testing.T) {
	clock := &controlplanetest.Clock{}
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Clock: clock})
	ctx := controlplanetest.Ctx(t)
	cl := c.Client(0)
	gw := gatewayClient(t, c, "gw1")
	clock.Advance(api.GatewayTTL + 5*time.Second) // the leader took office long ago
	step := api.GatewayTTL / 3
	for i := range 8 { // 8 steps: over two and a half TTLs
		if _, err := gw.Gateway.Heartbeat(ctx, &apipb.GatewayHeartbeatRequest{WanAddress: "127.0.0.1:8443"}); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Catalog.Register(ctx, &apipb.RegisterRequest{Service: &apipb.Service{Namespace: "probe", Name: "sentinel"},
			Instance: &apipb.Instance{Id: "s", Address: "10.0.0.1", Ttl: durationpb.New(step / 2)}}); err != nil {
			t.Fatal(err)
		}
		clock.Advance(step)
		controlplanetest.WaitFor(t, 10*time.Second, func() error {
			if h := health(t, cl, "probe", "sentinel", "s"); h != apipb.Health_HEALTH_CRITICAL {
				return fmt.Errorf("no tracker scan since the clock moved (sentinel %s)", h)
			}
			return nil
		})
		if h := health(t, cl, "strait", "gateway", "gw1"); h != apipb.Health_HEALTH_PASSING {
			t.Fatalf("step %d (%s after the first heartbeat): gateway %s", i, time.Duration(i+1)*step, h)
		}
	}
}

// TestStraitNamespaceReserved (M8): a token cannot write into the
// namespace Strait's gateways register in, so it cannot announce a fake
// gateway to the peers nor keep a dead one passing.
func TestStraitNamespaceReserved(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{})
	ctx := controlplanetest.Ctx(t)
	mgmt := c.Client(0)
	tok, err := mgmt.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_WRITE})
	if err != nil {
		t.Fatal(err)
	}
	for name, cl := range map[string]*apiclient.Client{"write": c.ClientWithToken(0, tok.Secret), "management": mgmt} {
		t.Run(name, func(t *testing.T) {
			calls := map[string]error{}
			_, calls["register"] = cl.Catalog.Register(ctx, &apipb.RegisterRequest{
				Service:  &apipb.Service{Namespace: "strait", Name: "gateway", Ports: []*apipb.ServicePort{{Name: "wan"}}},
				Instance: &apipb.Instance{Id: "fake-gw", Address: "127.0.0.1", Ports: map[string]uint32{"wan": 9}},
			})
			_, calls["deregister"] = cl.Catalog.Deregister(ctx, &apipb.DeregisterRequest{Namespace: "strait", Service: "gateway", InstanceId: "gw1"})
			_, calls["heartbeat"] = cl.Catalog.Heartbeat(ctx, &apipb.HeartbeatRequest{Namespace: "strait", Service: "gateway", InstanceId: "gw1"})
			for call, err := range calls {
				if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `namespace "strait" is reserved`) {
					t.Errorf("%s: %v, want PermissionDenied naming the reserved namespace", call, err)
				}
			}
		})
	}
	if _, err := mgmt.Catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: "strait", Name: "gateway"}); status.Code(err) != codes.NotFound {
		t.Fatalf("the refused registration left something: %v", err)
	}
}

// TestJoinsWithGarbageCSRLeaveNothing (L2): a join whose CSR does not
// parse is refused before its token is used, and records no agent or
// gateway.
func TestJoinsWithGarbageCSRLeaveNothing(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{})
	ctx := controlplanetest.Ctx(t)
	mgmt := c.Client(0)
	garbage := []byte("not a certificate request")
	joins := []struct {
		kind apipb.TokenKind
		join func(conn *grpc.ClientConn) error
	}{
		{apipb.TokenKind_TOKEN_KIND_AGENT, func(conn *grpc.ClientConn) error {
			_, err := apipb.NewIdentityClient(conn).AgentJoin(ctx, &apipb.AgentJoinRequest{Node: "x", Csr: garbage})
			return err
		}},
		{apipb.TokenKind_TOKEN_KIND_GATEWAY, func(conn *grpc.ClientConn) error {
			_, err := apipb.NewGatewayClient(conn).Join(ctx, &apipb.GatewayJoinRequest{Name: "x", Csr: garbage})
			return err
		}},
		{apipb.TokenKind_TOKEN_KIND_SERVER, func(conn *grpc.ClientConn) error {
			_, err := apipb.NewClusterClient(conn).Join(ctx, &apipb.JoinRequest{NodeId: "x", Address: "127.0.0.1:1", Csr: garbage})
			return err
		}},
	}
	for _, j := range joins {
		t.Run(j.kind.String(), func(t *testing.T) {
			tok, err := mgmt.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: j.kind})
			if err != nil {
				t.Fatal(err)
			}
			jt, err := jointoken.Parse(tok.Secret)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := jointoken.Dial(c.Nodes[0].Addr, jt)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if err := j.join(conn); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "csr") {
				t.Fatalf("garbage csr: %v, want InvalidArgument on csr", err)
			}
			l, err := mgmt.ACL.ListTokens(ctx, &apipb.ListTokensRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range l.Tokens {
				if x.AccessorId == tok.Token.AccessorId && x.Uses != 0 {
					t.Fatalf("the token was used (%d/%d)", x.Uses, x.MaxUses)
				}
			}
		})
	}
	agents, _ := mgmt.Workload.ListAgents(ctx, &apipb.ListAgentsRequest{})
	gws, _ := mgmt.Gateway.List(ctx, &apipb.ListGatewaysRequest{})
	if len(agents.GetAgents()) != 0 || len(gws.GetGateways()) != 0 {
		t.Fatalf("records left behind: agents %v, gateways %v", agents.GetAgents(), gws.GetGateways())
	}
}

// TestJoinTokenDefaults (L3): agent and gateway tokens created without
// bounds admit one node within a day; explicit bounds are kept.
func TestJoinTokenDefaults(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{})
	ctx := controlplanetest.Ctx(t)
	mgmt := c.Client(0)
	for _, kind := range []apipb.TokenKind{apipb.TokenKind_TOKEN_KIND_AGENT, apipb.TokenKind_TOKEN_KIND_GATEWAY} {
		t.Run(kind.String(), func(t *testing.T) {
			r, err := mgmt.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: kind})
			if err != nil {
				t.Fatal(err)
			}
			life := r.Token.ExpireTime.AsTime().Sub(r.Token.CreateTime.AsTime())
			if r.Token.MaxUses != 1 || life != api.DefaultJoinTokenTTL {
				t.Fatalf("default token: %d uses, life %s; want 1 and %s", r.Token.MaxUses, life, api.DefaultJoinTokenTTL)
			}
			r, err = mgmt.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: kind, MaxUses: 40, Ttl: durationpb.New(720 * time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			if life := r.Token.ExpireTime.AsTime().Sub(r.Token.CreateTime.AsTime()); r.Token.MaxUses != 40 || life != 720*time.Hour {
				t.Fatalf("explicit bounds: %d uses, life %s", r.Token.MaxUses, life)
			}
		})
	}
}

// TestBundleCommandsKeepPeerings (L10, issue 15 B2): `bundle federate`
// and `bundle remove` on a peer's trust domain are refused with a pointer
// to `federation delete`, and the peering stays whole.
func TestBundleCommandsKeepPeerings(t *testing.T) {
	a, b := fedSite(t, "aws-east", nil), fedSite(t, "gcp-west", nil)
	ctx := controlplanetest.Ctx(t)
	acl := a.Client(0)
	inv, err := acl.Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{Peer: "gcp-west"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client(0).Federation.Join(ctx, &apipb.JoinFederationRequest{Token: inv.Token}); err != nil {
		t.Fatal(err)
	}
	bb := siteBundle(t, b)
	_, errSet := acl.Bundle.SetForeign(ctx, &apipb.SetForeignRequest{TrustDomain: "gcp-west.strait", EndpointUrl: "https://" + b.Nodes[0].BundleAddr + "/",
		EndpointSpiffeId: "spiffe://gcp-west.strait/strait/bundle-endpoint", Bundle: bb.Bundle})
	_, errRemove := acl.Bundle.RemoveForeign(ctx, &apipb.RemoveForeignRequest{TrustDomain: "gcp-west.strait"})
	for name, err := range map[string]error{"federate": errSet, "remove": errRemove} {
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "strait federation delete gcp-west") {
			t.Errorf("bundle %s on a peer's trust domain: %v", name, err)
		}
	}
	l, err := acl.Federation.List(ctx, &apipb.ListPeersFedRequest{Name: "gcp-west"})
	if err != nil || len(l.Peers) != 1 {
		t.Fatalf("the peering after refused bundle commands: %v %v", l, err)
	}
}

// TestIntentionWarnings: an intention naming an unknown site or service
// is stored, with a warning saying so.
func TestIntentionWarnings(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "aws-east"})
	ctx := controlplanetest.Ctx(t)
	cl := c.Client(0)
	register(t, cl, "api", "a1")
	set := func(src, dst string) []string {
		t.Helper()
		r, err := cl.Intentions.Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{Source: src, Destination: dst, Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW}})
		if err != nil {
			t.Fatal(err)
		}
		return r.Warnings
	}
	if w := set("aws-eats", "payments/apii"); len(w) != 2 || !strings.HasPrefix(w[0], "no peer named aws-eats (yet)") || !strings.HasPrefix(w[1], "no service payments/apii here (yet)") {
		t.Fatalf("typos: warnings %q", w)
	}
	if w := set("aws-east", "payments/api"); len(w) != 0 {
		t.Fatalf("known site and service: warnings %q", w)
	}
	if w := set("aws-east", "nowhere/*"); len(w) != 1 || !strings.Contains(w[0], "no service in namespace nowhere") {
		t.Fatalf("empty namespace: warnings %q", w)
	}
	if l, _ := cl.Intentions.List(ctx, &apipb.ListIntentionsRequest{}); len(l.Intentions) != 3 {
		t.Fatalf("intentions with warnings not stored: %v", l.Intentions)
	}
}

// TestJoinTokenIgnoredIsLogged (issue 15): a server restarted with a join
// token while its data dir already holds its identity says that the token
// is ignored.
func TestJoinTokenIgnoredIsLogged(t *testing.T) {
	var logs lockedBuffer
	var restarted atomic.Bool
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Tweak: func(cfg *controlplane.Config) {
		if restarted.Load() {
			cfg.JoinToken = "strait_x.y"
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		}
	}})
	c.Nodes[0].Stop()
	restarted.Store(true)
	c.Nodes[0].Restart()
	if s := logs.String(); !strings.Contains(s, "level=WARN") || !strings.Contains(s, "join token ignored") {
		t.Fatalf("no warning in the restarted server's log:\n%s", s)
	}
}
