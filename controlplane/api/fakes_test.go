package api

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/replication"
	"github.com/straitmesh/strait/trust/ca"
)

// Fakes of the small interfaces the services take, for handler unit
// tests that need no Raft cluster. A fake is enough here: these tests are
// about what a handler does with a request (validation, authorization,
// forwarding, the status code of each error), and the fakes return what
// the real node would, or an error the test injects. The real node (Raft,
// the CA, peers) is covered by package controlplane's cluster tests.
//
// fakeRaft applies commands to a real store through the real state
// machine, so that what a handler commits can be read back.

var testTD = spiffeid.RequireTrustDomainFromString("test.strait")

type fakeRaft struct {
	mu         sync.Mutex
	leader     bool
	fsm        *state.FSM
	index      uint64
	applyErr   error // returned by Apply instead of committing
	readErr    error // returned by ConsistentRead
	reads      int   // ConsistentRead calls
	leaderConn *grpc.ClientConn
}

func newFakeRaft(leader bool) *fakeRaft {
	return &fakeRaft{leader: leader, fsm: &state.FSM{Store: state.NewStore(0)}}
}

func (f *fakeRaft) store() *state.Store { return f.fsm.Store }

// set changes the fake under its lock (the handlers run elsewhere).
func (f *fakeRaft) set(fn func(f *fakeRaft)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// counts are the last index committed and the consistent reads asked.
func (f *fakeRaft) counts() (index uint64, reads int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.index, f.reads
}

func (f *fakeRaft) IsLeader() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leader
}

func (f *fakeRaft) LeaderConn(context.Context) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.leader {
		return nil, ErrNotLeader
	}
	if f.leaderConn == nil {
		return nil, ErrNoLeader
	}
	return f.leaderConn, nil
}

func (f *fakeRaft) Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error) {
	f.mu.Lock()
	leader, err := f.leader, f.applyErr
	f.mu.Unlock()
	if !leader {
		return nil, 0, ErrNotLeader
	}
	if err != nil {
		return nil, 0, err
	}
	return f.commit(cmd)
}

// commit applies cmd whether or not this fake leads (test setup).
func (f *fakeRaft) commit(cmd *statepb.Command) (any, uint64, error) {
	if cmd.Time == nil {
		cmd.Time = timestamppb.Now()
	}
	data, err := state.Encode(cmd)
	if err != nil {
		return nil, 0, err
	}
	f.mu.Lock()
	f.index++
	idx := f.index
	f.mu.Unlock()
	res := f.fsm.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data}).(state.Result)
	return res.Value, idx, res.Err
}

func (f *fakeRaft) ConsistentRead(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if !f.leader {
		return ErrNotLeader
	}
	return f.readErr
}

// fakeNode implements the per-service interfaces, each method returning
// its field (or err when set).
type fakeNode struct {
	mu         sync.Mutex
	err        error // every method that can fail returns it when set
	heartbeats []*apipb.InstanceKey
	removed    []string
	pin        string
	status     *apipb.StatusResponse
	intention  *apipb.CheckIntentionResponse
}

// set changes the fake under its lock (the handlers run elsewhere).
func (n *fakeNode) set(fn func(n *fakeNode)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	fn(n)
}

// calls are the heartbeats and removals the node was asked for.
func (n *fakeNode) calls() (heartbeats []*apipb.InstanceKey, removed []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.heartbeats, n.removed
}

func (n *fakeNode) fail() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

func (n *fakeNode) Heartbeat(ctx context.Context, k *apipb.InstanceKey) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.heartbeats = append(n.heartbeats, k)
	return n.err
}

func (n *fakeNode) TokenPin() string { return n.pin }

func (n *fakeNode) Status() *apipb.StatusResponse { return n.status }

func (n *fakeNode) ProbeServers(context.Context) []*apipb.ServerHealth {
	return []*apipb.ServerHealth{{Id: n.status.NodeId, Reachable: true, Voter: true, Status: n.status}}
}

func (n *fakeNode) Peers() ([]*apipb.RaftPeer, error) {
	return []*apipb.RaftPeer{{Id: n.status.NodeId, Voter: true, Leader: true}}, n.fail()
}

func (n *fakeNode) RemovePeer(ctx context.Context, id string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.removed = append(n.removed, id)
	return n.err
}

func (n *fakeNode) RotateCA(context.Context) (*apipb.CARootStatus, error) {
	return &apipb.CARootStatus{Phase: "prepared"}, n.fail()
}

func (n *fakeNode) CAStatus() (*apipb.CAStatusResponse, error) {
	return &apipb.CAStatusResponse{}, n.fail()
}

func (n *fakeNode) Join(ctx context.Context, req *apipb.JoinRequest) (*apipb.JoinResponse, error) {
	if err := n.fail(); err != nil {
		return nil, err
	}
	return &apipb.JoinResponse{Site: "test", TrustDomain: testTD.Name(), Index: 7}, nil
}

func (n *fakeNode) Promote(context.Context, string, uint64) error { return n.fail() }
func (n *fakeNode) Leave(context.Context, string) error           { return n.fail() }

func (n *fakeNode) OwnBundle() (*spiffebundle.Bundle, error) {
	return spiffebundle.New(testTD), n.fail()
}

func (n *fakeNode) FetchForeign(ctx context.Context, f *statepb.ForeignBundle) (*spiffebundle.Bundle, error) {
	return nil, errors.New("fetching is not faked")
}

func (n *fakeNode) SignSVID(ctx context.Context, id spiffeid.ID, csr []byte, ttl time.Duration) (*x509.Certificate, error) {
	return nil, n.fail()
}

func (n *fakeNode) Authorities() ([]*x509.Certificate, error) { return nil, n.fail() }

func (n *fakeNode) WorkloadSVIDTTL() time.Duration { return time.Hour }

func (n *fakeNode) SignJWT(ctx context.Context, id spiffeid.ID, audience []string, ttl time.Duration) (string, error) {
	return "", n.fail()
}

func (n *fakeNode) JWTAuthorities() (map[string]crypto.PublicKey, error) { return nil, n.fail() }

// fakePeering is the peering component: only CheckIntention and
// FetchForeign (fakeNode's) are faked; the federation handlers are covered
// by controlplane's multi-site tests.
type fakePeering struct{ *fakeNode }

func (fakePeering) CreateInvite(context.Context, string, time.Duration) (*apipb.CreateInviteResponse, error) {
	return nil, errors.New("peering is not faked")
}

func (fakePeering) Join(context.Context, string, string) (*statepb.ForeignBundle, error) {
	return nil, errors.New("peering is not faked")
}

func (fakePeering) Accept(context.Context, string, *apipb.AcceptRequest) (string, error) {
	return "", errors.New("peering is not faked")
}

func (fakePeering) NotifyUnpeer(context.Context, *statepb.ForeignBundle) error {
	return errors.New("peering is not faked")
}

func (fakePeering) ServeExport(context.Context, string, replication.Stream) error {
	return errors.New("peering is not faked")
}

func (fakePeering) Replication() *replication.Registry { return replication.NewRegistry(nil, time.Now) }

func (fakePeering) StaleAfter() time.Duration { return time.Minute }

func (n *fakeNode) CheckIntention(ctx context.Context, f *statepb.ForeignBundle, ns, svc string) (*apipb.CheckIntentionResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.intention, n.err
}

var (
	_ Raft      = (*fakeRaft)(nil)
	_ Catalog   = (*fakeNode)(nil)
	_ Authority = (*fakeNode)(nil)
	_ Operator  = (*fakeNode)(nil)
	_ Cluster   = (*fakeNode)(nil)
	_ Bundles   = (*fakeNode)(nil)
	_ Peering   = fakePeering{}
)

// testServer is one API server on loopback (plain gRPC: the tokens ride
// in metadata; SVID-only methods are refused, as for a caller without
// one) over a fake node.
type testServer struct {
	raft  *fakeRaft
	node  *fakeNode
	conn  *grpc.ClientConn
	token string // a management token's secret
}

// startAPI serves the API over raft and a fresh fakeNode.
func startAPI(t *testing.T, r *fakeRaft) *testServer {
	t.Helper()
	node := &fakeNode{pin: "PIN", status: &apipb.StatusResponse{Site: "test", NodeId: "s1", State: "leader", LeaderId: "s1", Healthy: true}}
	srv := New(Config{
		Store: r.store(), Raft: r, Catalog: node, Authority: node, Operator: node, Cluster: node, Bundles: node, Peering: fakePeering{node},
		TrustDomain: func() spiffeid.TrustDomain { return testTD }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	gs := grpc.NewServer(srv.ServerOptions()...)
	srv.RegisterServices(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ts := &testServer{raft: r, node: node, conn: conn}
	ts.token = ts.addToken(t, apipb.TokenKind_TOKEN_KIND_MANAGEMENT)
	return ts
}

// addToken stores a token of kind and returns its secret.
func (ts *testServer) addToken(t *testing.T, kind apipb.TokenKind) string {
	t.Helper()
	secret, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	acc, err := NewAccessorID()
	if err != nil {
		t.Fatal(err)
	}
	h := state.HashSecret(secret)
	tok := &apipb.Token{AccessorId: acc, Kind: kind, CreateTime: timestamppb.Now()}
	switch kind {
	case apipb.TokenKind_TOKEN_KIND_SERVER, apipb.TokenKind_TOKEN_KIND_AGENT, apipb.TokenKind_TOKEN_KIND_GATEWAY:
		tok.MaxUses = 1 // as ACL.CreateToken makes them by default
	}
	if _, _, err := ts.raft.commit(state.CreateTokenCommand(tok, h[:], "")); err != nil {
		t.Fatal(err)
	}
	return secret
}

// testCSR is a CSR over a fresh key.
func testCSR(t *testing.T) []byte {
	t.Helper()
	key, err := ca.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// as is a context that calls with token ("" for none).
func as(token string) context.Context {
	ctx := context.Background()
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, authHeader, "Bearer "+token)
}
