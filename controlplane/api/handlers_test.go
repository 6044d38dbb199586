package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust/authority"
)

// Handler tests over fakes (see fakes_test.go for why a fake is enough).
// Each case is one call through real gRPC and the real interceptors, and
// the status code (and a piece of the message) it must end with.

type call struct {
	name  string
	token string // "mgmt", "read", "write", "agent", "none"
	setup func(t *testing.T, ts *testServer)
	do    func(ctx context.Context, ts *testServer) error
	code  codes.Code
	msg   string // a substring of the status message, when set
	check func(t *testing.T, ts *testServer)
}

func runCalls(t *testing.T, calls []call) {
	t.Helper()
	for _, tt := range calls {
		t.Run(tt.name, func(t *testing.T) {
			ts := startAPI(t, newFakeRaft(true))
			if tt.setup != nil {
				tt.setup(t, ts)
			}
			tok := ts.token
			switch tt.token {
			case "none":
				tok = ""
			case "read":
				tok = ts.addToken(t, apipb.TokenKind_TOKEN_KIND_READ)
			case "write":
				tok = ts.addToken(t, apipb.TokenKind_TOKEN_KIND_WRITE)
			case "agent":
				tok = ts.addToken(t, apipb.TokenKind_TOKEN_KIND_AGENT)
			case "gateway":
				tok = ts.addToken(t, apipb.TokenKind_TOKEN_KIND_GATEWAY)
			}
			err := tt.do(as(tok), ts)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code %s (%v), want %s", got, err, tt.code)
			}
			if tt.msg != "" && !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Fatalf("message %q, want it to mention %q", status.Convert(err).Message(), tt.msg)
			}
			if tt.check != nil {
				tt.check(t, ts)
			}
		})
	}
}

func register(svc, id string, ttl bool) *apipb.RegisterRequest {
	r := &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "payments", Name: svc, Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
		Instance: &apipb.Instance{Id: id, Address: "10.0.0.1", Ports: map[string]uint32{"http": 8080}},
	}
	if ttl {
		r.Instance.Ttl = durationpb.New(30e9)
	}
	return r
}

func TestCatalogHandlers(t *testing.T) {
	catalog := func(ts *testServer) apipb.CatalogClient { return apipb.NewCatalogClient(ts.conn) }
	runCalls(t, []call{
		{name: "register", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Register(ctx, register("api", "api-1", false))
				return err
			},
			check: func(t *testing.T, ts *testServer) {
				if _, insts, _, ok := ts.raft.store().Service(state.ServiceKey{Namespace: "payments", Name: "api"}, false); !ok || len(insts) != 1 {
					t.Fatalf("instance not committed: %v", insts)
				}
				if beats, _ := ts.node.calls(); len(beats) != 0 {
					t.Fatal("an instance without a ttl got a heartbeat")
				}
			}},
		{name: "register with a ttl counts as the first heartbeat", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Register(ctx, register("api", "api-1", true))
				return err
			},
			check: func(t *testing.T, ts *testServer) {
				if beats, _ := ts.node.calls(); len(beats) != 1 || beats[0].Id != "api-1" {
					t.Fatalf("heartbeats %v, want api-1's", beats)
				}
			}},
		{name: "register refused before Raft: invalid", code: codes.InvalidArgument, msg: "service.name",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Register(ctx, register("API", "api-1", false))
				return err
			},
			check: func(t *testing.T, ts *testServer) {
				if idx, _ := ts.raft.counts(); idx != 1 { // the token only
					t.Fatalf("something was committed: index %d", idx)
				}
			}},
		{name: "register into the gateways' namespace", code: codes.PermissionDenied, msg: "reserved",
			do: func(ctx context.Context, ts *testServer) error {
				r := register("api", "api-1", false)
				r.Service.Namespace, r.Instance.Namespace = state.GatewayNamespace, state.GatewayNamespace
				_, err := catalog(ts).Register(ctx, r)
				return err
			}},
		{name: "register without a token", token: "none", code: codes.Unauthenticated, msg: "no token",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Register(ctx, register("api", "api-1", false))
				return err
			}},
		{name: "register with a read token", token: "read", code: codes.PermissionDenied, msg: "a read token may not call",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Register(ctx, register("api", "api-1", false))
				return err
			}},
		{name: "register with an agent token", token: "agent", code: codes.PermissionDenied,
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Register(ctx, register("api", "api-1", false))
				return err
			}},
		{name: "register with an unknown token", code: codes.Unauthenticated, msg: "unknown or revoked",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Register(as("strait_nope"), register("api", "api-1", false))
				return err
			}},
		{name: "register with a write token", token: "write", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Register(ctx, register("api", "api-1", false))
				return err
			}},
		{name: "a lost leadership mid-write is Aborted", code: codes.Aborted, msg: "read it back",
			setup: func(t *testing.T, ts *testServer) {
				ts.raft.set(func(f *fakeRaft) { f.applyErr = raft.ErrLeadershipLost })
			},
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Register(ctx, register("api", "api-1", false))
				return err
			}},
		{name: "heartbeat of an unknown instance", code: codes.NotFound,
			setup: func(t *testing.T, ts *testServer) {
				ts.node.set(func(n *fakeNode) { n.err = fmt.Errorf("instance x: %w", state.ErrNotFound) })
			},
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Heartbeat(ctx, &apipb.HeartbeatRequest{Namespace: "payments", Service: "api", InstanceId: "x"})
				return err
			}},
		{name: "heartbeat with a bad instance id", code: codes.InvalidArgument, msg: "instance_id",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).Heartbeat(ctx, &apipb.HeartbeatRequest{Namespace: "payments", Service: "api", InstanceId: "Not A Label"})
				return err
			}},
		{name: "get an unknown service", token: "read", code: codes.NotFound, msg: "service payments/none",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).GetService(ctx, &apipb.GetServiceRequest{Namespace: "payments", Name: "none"})
				return err
			}},
		{name: "consistent read asks the node", token: "read", code: codes.Unavailable,
			setup: func(t *testing.T, ts *testServer) { ts.raft.set(func(f *fakeRaft) { f.readErr = ErrNoLeader }) },
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).ListServices(ctx, &apipb.ListServicesRequest{Mode: apipb.ReadMode_READ_MODE_CONSISTENT})
				return err
			},
			check: func(t *testing.T, ts *testServer) {
				if _, reads := ts.raft.counts(); reads != 1 {
					t.Fatalf("%d consistent reads, want 1", reads)
				}
			}},
		{name: "unknown read mode", token: "read", code: codes.InvalidArgument, msg: "mode",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := catalog(ts).ListServices(ctx, &apipb.ListServicesRequest{Mode: 42})
				return err
			}},
	})
}

func TestACLHandlers(t *testing.T) {
	acl := func(ts *testServer) apipb.ACLClient { return apipb.NewACLClient(ts.conn) }
	runCalls(t, []call{
		{name: "a server token carries the CA pin", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				r, err := acl(ts).CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_SERVER})
				if err == nil && !strings.HasSuffix(r.Secret, ".PIN") {
					return fmt.Errorf("secret %q has no pin", r.Secret)
				}
				if err == nil && (r.Token.MaxUses != 1 || r.Token.ExpireTime == nil) {
					return fmt.Errorf("server token %v: want single-use and expiring", r.Token)
				}
				return err
			}},
		{name: "a read token has no pin", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				r, err := acl(ts).CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_READ})
				if err == nil && strings.Contains(r.Secret, ".") {
					return fmt.Errorf("secret %q has a pin", r.Secret)
				}
				return err
			}},
		{name: "no kind", code: codes.InvalidArgument, msg: "kind",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := acl(ts).CreateToken(ctx, &apipb.CreateTokenRequest{})
				return err
			}},
		{name: "too many server uses", code: codes.InvalidArgument, msg: "max_uses",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := acl(ts).CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_SERVER, MaxUses: MaxServerTokenUses + 1})
				return err
			}},
		{name: "negative ttl", code: codes.InvalidArgument, msg: "ttl",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := acl(ts).CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_READ, Ttl: durationpb.New(-1)})
				return err
			}},
		{name: "only management tokens manage tokens", token: "write", code: codes.PermissionDenied,
			do: func(ctx context.Context, ts *testServer) error {
				_, err := acl(ts).ListTokens(ctx, &apipb.ListTokensRequest{})
				return err
			}},
		{name: "revoke a malformed accessor", code: codes.InvalidArgument, msg: "accessor_id",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := acl(ts).RevokeToken(ctx, &apipb.RevokeTokenRequest{AccessorId: "short"})
				return err
			}},
		{name: "revoke an unknown accessor", code: codes.NotFound,
			do: func(ctx context.Context, ts *testServer) error {
				_, err := acl(ts).RevokeToken(ctx, &apipb.RevokeTokenRequest{AccessorId: strings.Repeat("0", 32)})
				return err
			}},
	})
}

func TestOperatorAndClusterHandlers(t *testing.T) {
	op := func(ts *testServer) apipb.OperatorClient { return apipb.NewOperatorClient(ts.conn) }
	cluster := func(ts *testServer) apipb.ClusterClient { return apipb.NewClusterClient(ts.conn) }
	runCalls(t, []call{
		{name: "status is the node's", token: "read", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				r, err := op(ts).Status(ctx, &apipb.StatusRequest{})
				if err == nil && r.NodeId != "s1" {
					return fmt.Errorf("status %v", r)
				}
				return err
			}},
		{name: "site status judges the node's servers", token: "read", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				r, err := op(ts).SiteStatus(ctx, &apipb.SiteStatusRequest{})
				if err == nil && (r.Verdict != VerdictHealthy || len(r.Servers) != 1) {
					return fmt.Errorf("site status %v", r)
				}
				return err
			}},
		{name: "remove a peer", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				_, err := op(ts).RemovePeer(ctx, &apipb.RemovePeerRequest{Id: "s2"})
				return err
			},
			check: func(t *testing.T, ts *testServer) {
				if _, removed := ts.node.calls(); len(removed) != 1 || removed[0] != "s2" {
					t.Fatalf("removed %v", removed)
				}
			}},
		{name: "remove an unknown peer", code: codes.NotFound,
			setup: func(t *testing.T, ts *testServer) {
				ts.node.set(func(n *fakeNode) { n.err = fmt.Errorf("server s9: %w", state.ErrNotFound) })
			},
			do: func(ctx context.Context, ts *testServer) error {
				_, err := op(ts).RemovePeer(ctx, &apipb.RemovePeerRequest{Id: "s9"})
				return err
			}},
		{name: "remove a peer named badly", code: codes.InvalidArgument, msg: "id",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := op(ts).RemovePeer(ctx, &apipb.RemovePeerRequest{Id: "S 1"})
				return err
			},
			check: func(t *testing.T, ts *testServer) {
				if _, removed := ts.node.calls(); len(removed) != 0 {
					t.Fatal("the node was asked")
				}
			}},
		{name: "remove a peer with a read token", token: "read", code: codes.PermissionDenied,
			do: func(ctx context.Context, ts *testServer) error {
				_, err := op(ts).RemovePeer(ctx, &apipb.RemovePeerRequest{Id: "s2"})
				return err
			}},
		{name: "promote without a server's SVID", code: codes.PermissionDenied, msg: "only servers of this site",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := cluster(ts).Promote(ctx, &apipb.PromoteRequest{})
				return err
			}},
		{name: "server status without a server's SVID", code: codes.PermissionDenied,
			do: func(ctx context.Context, ts *testServer) error {
				_, err := cluster(ts).ServerStatus(ctx, &apipb.StatusRequest{})
				return err
			}},
		{name: "join with a management token", code: codes.PermissionDenied, msg: "not a valid server join token",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := cluster(ts).Join(ctx, &apipb.JoinRequest{NodeId: "s2", Address: "127.0.0.1:8300", Csr: testCSR(t)})
				return err
			}},
		{name: "join with garbage instead of a CSR", code: codes.InvalidArgument, msg: "csr",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := cluster(ts).Join(ctx, &apipb.JoinRequest{NodeId: "s2", Address: "127.0.0.1:8300", Csr: []byte{1}})
				return err
			}},
	})
}

func TestServerJoinConsumesTheToken(t *testing.T) {
	ts := startAPI(t, newFakeRaft(true))
	tok := ts.addToken(t, apipb.TokenKind_TOKEN_KIND_SERVER)
	cluster := apipb.NewClusterClient(ts.conn)
	req := &apipb.JoinRequest{NodeId: "s2", Address: "127.0.0.1:8300", Csr: testCSR(t)}
	// The node refuses (a member of that name exists): the token is
	// consumed all the same, since the refusal came after the check.
	ts.node.set(func(n *fakeNode) { n.err = fmt.Errorf("server %q is already a member: %w", "s2", state.ErrConflict) })
	if _, err := cluster.Join(as(tok), req); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("join refused by the node: %v, want FailedPrecondition", err)
	}
	ts.node.set(func(n *fakeNode) { n.err = nil })
	if _, err := cluster.Join(as(tok), req); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("join with a used token: %v, want PermissionDenied", err)
	}
}

func TestBundleIntentionGatewayHandlers(t *testing.T) {
	bundle := func(ts *testServer) apipb.BundleClient { return apipb.NewBundleClient(ts.conn) }
	intentions := func(ts *testServer) apipb.IntentionsClient { return apipb.NewIntentionsClient(ts.conn) }
	gateway := func(ts *testServer) apipb.GatewayClient { return apipb.NewGatewayClient(ts.conn) }
	peer := func(t *testing.T, ts *testServer) {
		f := &statepb.ForeignBundle{TrustDomain: "east.strait", PeerName: "east", Bundle: []byte("{}")}
		if _, _, err := ts.raft.commit(&statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: f}}); err != nil {
			t.Fatal(err)
		}
	}
	runCalls(t, []call{
		{name: "own bundle", token: "read", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				r, err := bundle(ts).GetBundle(ctx, &apipb.GetBundleRequest{})
				if err == nil && r.TrustDomain != testTD.Name() {
					return fmt.Errorf("bundle of %s", r.TrustDomain)
				}
				return err
			}},
		{name: "own bundle before the site exists", token: "read", code: codes.Unavailable,
			setup: func(t *testing.T, ts *testServer) {
				ts.node.set(func(n *fakeNode) { n.err = state.ErrNotBootstrapped })
			},
			do: func(ctx context.Context, ts *testServer) error {
				_, err := bundle(ts).GetBundle(ctx, &apipb.GetBundleRequest{})
				return err
			}},
		{name: "a foreign bundle for this site's own trust domain", code: codes.InvalidArgument, msg: "own trust domain",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := bundle(ts).SetForeign(ctx, &apipb.SetForeignRequest{TrustDomain: testTD.Name(), EndpointUrl: "https://x.example"})
				return err
			}},
		{name: "a foreign bundle over http", code: codes.InvalidArgument, msg: "endpoint_url",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := bundle(ts).SetForeign(ctx, &apipb.SetForeignRequest{TrustDomain: "other.strait", EndpointUrl: "http://x.example"})
				return err
			}},
		{name: "removing a peer's bundle is a peering's job", setup: peer, code: codes.FailedPrecondition, msg: "strait federation delete east",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := bundle(ts).RemoveForeign(ctx, &apipb.RemoveForeignRequest{TrustDomain: "east.strait"})
				return err
			}},
		{name: "an intention without an action", code: codes.InvalidArgument, msg: "intention.action",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := intentions(ts).Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{Source: "east/payments/api", Destination: "payments/db"}})
				return err
			}},
		{name: "an intention with a warning", code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				r, err := intentions(ts).Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{
					Source: "east/payments/api", Destination: "payments/db", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW}})
				if err == nil && len(r.Warnings) == 0 {
					return errors.New("no warning for a peer that does not exist")
				}
				return err
			}},
		{name: "check a peer's intention: unknown peer", token: "read", code: codes.NotFound, msg: "east",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := intentions(ts).CheckPeer(ctx, &apipb.CheckPeerIntentionRequest{Peer: "east", Namespace: "payments", Service: "db"})
				return err
			}},
		{name: "check a peer's intention: the peer answers", token: "read", setup: func(t *testing.T, ts *testServer) {
			peer(t, ts)
			ts.node.set(func(n *fakeNode) { n.intention = &apipb.CheckIntentionResponse{Allowed: true} })
		}, code: codes.OK,
			do: func(ctx context.Context, ts *testServer) error {
				r, err := intentions(ts).CheckPeer(ctx, &apipb.CheckPeerIntentionRequest{Peer: "east", Namespace: "payments", Service: "db"})
				if err == nil && !r.Allowed {
					return errors.New("the peer's answer was lost")
				}
				return err
			}},
		{name: "check a peer's intention: the peer does not answer", token: "read", setup: func(t *testing.T, ts *testServer) {
			peer(t, ts)
			ts.node.set(func(n *fakeNode) { n.err = Unreachable("peer east did not answer: connection refused") })
		}, code: codes.Unavailable, msg: "did not answer",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := intentions(ts).CheckPeer(ctx, &apipb.CheckPeerIntentionRequest{Peer: "east", Namespace: "payments", Service: "db"})
				return err
			}},
		{name: "check from a peer without a peer server's SVID", code: codes.PermissionDenied, msg: "only servers of a peer site",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := intentions(ts).CheckFromPeer(ctx, &apipb.CheckPeerIntentionRequest{Namespace: "payments", Service: "db"})
				return err
			}},
		{name: "gateway join with an agent token", token: "agent", code: codes.PermissionDenied, msg: "not a valid gateway token",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := gateway(ts).Join(ctx, &apipb.GatewayJoinRequest{Name: "gw1", Csr: testCSR(t)})
				return err
			}},
		{name: "gateway join twice", token: "gateway", code: codes.AlreadyExists, msg: "strait gateway revoke gw1",
			setup: func(t *testing.T, ts *testServer) {
				if _, _, err := ts.raft.commit(state.SetGatewayCommand(&apipb.GatewayRecord{Name: "gw1"})); err != nil {
					t.Fatal(err)
				}
			},
			do: func(ctx context.Context, ts *testServer) error {
				_, err := gateway(ts).Join(ctx, &apipb.GatewayJoinRequest{Name: "gw1", Csr: testCSR(t)})
				return err
			}},
		{name: "gateway heartbeat without the gateway's SVID", code: codes.PermissionDenied, msg: "only gateways of this site",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := gateway(ts).Heartbeat(ctx, &apipb.GatewayHeartbeatRequest{WanAddress: "127.0.0.1:8443"})
				return err
			}},
		{name: "revoke an unknown gateway", code: codes.NotFound, msg: "gw9",
			do: func(ctx context.Context, ts *testServer) error {
				_, err := gateway(ts).Revoke(ctx, &apipb.RevokeGatewayRequest{Name: "gw9"})
				return err
			}},
	})
}

// TestForwarding: a follower sends writes and consistent reads to the
// leader, never local reads, and never forwards a forwarded call again.
func TestForwarding(t *testing.T) {
	leader := startAPI(t, newFakeRaft(true))
	follower := startAPI(t, newFakeRaft(false))
	// Both servers know the leader's management token (it is replicated).
	follower.token = leader.token
	rec, ok := leader.raft.store().TokenBySecret(state.HashSecret(leader.token))
	if !ok {
		t.Fatal("no token")
	}
	if _, _, err := follower.raft.commit(state.CreateTokenCommand(rec.Token, rec.SecretHash, rec.PeerName)); err != nil {
		t.Fatal(err)
	}
	ctx := as(leader.token)
	catalog := apipb.NewCatalogClient(follower.conn)

	// No leader known: Unavailable, retryable.
	_, err := catalog.Register(ctx, register("api", "api-1", false))
	if status.Code(err) != codes.Unavailable || !safeToRetry(err) {
		t.Fatalf("write without a leader: %v, want retryable Unavailable", err)
	}

	follower.raft.set(func(f *fakeRaft) { f.leaderConn = leader.conn })
	if _, err := catalog.Register(ctx, register("api", "api-1", false)); err != nil {
		t.Fatalf("forwarded write: %v", err)
	}
	if _, _, _, ok := leader.raft.store().Service(state.ServiceKey{Namespace: "payments", Name: "api"}, false); !ok {
		t.Fatal("the forwarded write did not reach the leader")
	}
	if _, err := catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: "payments", Name: "api", Mode: apipb.ReadMode_READ_MODE_CONSISTENT}); err != nil {
		t.Fatalf("forwarded consistent read: %v", err)
	}
	if _, lr := leader.raft.counts(); lr != 1 {
		t.Fatalf("consistent reads on the leader: %d, want 1", lr)
	}
	if _, fr := follower.raft.counts(); fr != 0 {
		t.Fatalf("consistent reads on the follower: %d, want 0", fr)
	}
	// A local read is this replica's, which has not got the write.
	if _, err := catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: "payments", Name: "api"}); status.Code(err) != codes.NotFound {
		t.Fatalf("local read on the follower: %v, want NotFound from its own replica", err)
	}

	// The leader steps down: the forwarded call lands on a follower,
	// which refuses it rather than forwarding again.
	leader.raft.set(func(f *fakeRaft) { f.leader, f.leaderConn = false, follower.conn })
	_, err = catalog.Register(ctx, register("api", "api-2", false))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "leadership moved") {
		t.Fatalf("forwarded to a follower: %v, want Unavailable (leadership moved)", err)
	}
}

func TestToStatus(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		code  codes.Code
		retry bool // carries RetryInfo
	}{
		{"field", fieldErr("service.name", "bad"), codes.InvalidArgument, false},
		{"not found", fmt.Errorf("service x: %w", state.ErrNotFound), codes.NotFound, false},
		{"conflict", fmt.Errorf("x: %w", state.ErrConflict), codes.FailedPrecondition, false},
		{"conflict with advice", conflict("x is kept by the peering"), codes.FailedPrecondition, false},
		{"token invalid", state.ErrTokenInvalid, codes.PermissionDenied, false},
		{"denied", denied("no"), codes.PermissionDenied, false},
		{"exists", exists("gateway gw1 has already joined"), codes.AlreadyExists, false},
		{"not bootstrapped", state.ErrNotBootstrapped, codes.Unavailable, false},
		{"leadership lost", raft.ErrLeadershipLost, codes.Aborted, false},
		{"not leader", ErrNotLeader, codes.Unavailable, true},
		{"no leader", ErrNoLeader, codes.Unavailable, true},
		{"raft not leader", raft.ErrNotLeader, codes.Unavailable, true},
		{"raft shut down", raft.ErrRaftShutdown, codes.Unavailable, true},
		{"enqueue timeout", raft.ErrEnqueueTimeout, codes.ResourceExhausted, false},
		{"overloaded", Overloaded("signing rate limit (10/s): context deadline exceeded"), codes.ResourceExhausted, false},
		{"signing rate", fmt.Errorf("sign: %w", authority.ErrSignRateLimited), codes.ResourceExhausted, false},
		{"unreachable", Unreachable("peer east did not answer"), codes.Unavailable, false},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, false},
		{"canceled", context.Canceled, codes.Canceled, false},
		{"status kept", status.Error(codes.OutOfRange, "x"), codes.OutOfRange, false},
		{"anything else", errors.New("disk on fire"), codes.Internal, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := toStatus(tt.err)
			st := status.Convert(err)
			if st.Code() != tt.code {
				t.Fatalf("code %s, want %s", st.Code(), tt.code)
			}
			if safeToRetry(err) != tt.retry {
				t.Fatalf("safe to retry: %v, want %v", !tt.retry, tt.retry)
			}
			if tt.code == codes.InvalidArgument {
				if d := st.Details(); len(d) != 1 || d[0].(*errdetails.BadRequest).FieldViolations[0].Field != "service.name" {
					t.Fatalf("details %v, want the field", d)
				}
			}
		})
	}
	if toStatus(nil) != nil {
		t.Fatal("nil became an error")
	}
}
