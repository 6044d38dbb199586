package controlplane

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust"
)

var (
	_ api.Raft     = (*raftNode)(nil)
	_ api.Operator = raftAdmin{}
	_ api.Cluster  = raftAdmin{}
)

// Version is the server's version, set at build time.
var Version = "dev"

var errNoSuchPeer = errors.New("no such server in the raft configuration")

// Store is the local replica the node applies to.
func (n *raftNode) Store() *state.Store { return n.store }

// IsLeader reports whether this node leads.
func (n *raftNode) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderContext is the context of the current term's leadership: it ends
// when this server stops leading. ok is false when it does not lead (or
// has not finished taking over).
func (n *raftNode) LeaderContext() (ctx context.Context, ok bool) { return n.leaders.Context() }

// Apply commits cmd through Raft (leader only; api.ErrNotLeader
// otherwise) and returns the command's result and log index.
func (n *raftNode) Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error) {
	if !n.IsLeader() {
		return nil, 0, api.ErrNotLeader
	}
	if cmd.Time == nil {
		cmd.Time = timestamppb.New(n.now())
	}
	data, err := state.Encode(cmd)
	if err != nil {
		return nil, 0, err
	}
	timeout := raftApplyTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	start := time.Now()
	f := n.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		return nil, 0, err
	}
	n.applyTime.Observe(time.Since(start).Seconds())
	res, ok := f.Response().(state.Result)
	if !ok {
		return nil, f.Index(), fmt.Errorf("apply: unexpected result %T", f.Response())
	}
	return res.Value, f.Index(), res.Err
}

// ConsistentRead returns nil once a read of the local store is
// linearizable. A read is linearizable when this server leads, has
// applied every entry committed before its term (a barrier committed in
// this term proves it), and still leads in the same term after
// confirming with a quorum. A server leads at most once per term, so
// checking the term also catches a lost-and-regained leadership that a
// notification could have missed.
func (n *raftNode) ConsistentRead(ctx context.Context) error {
	if !n.IsLeader() {
		return api.ErrNotLeader
	}
	term := n.raft.CurrentTerm()
	if n.readyTerm.Load() != term {
		if err := n.barrier(term); err != nil {
			return err
		}
	}
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return err
	}
	if n.raft.CurrentTerm() != term {
		return api.ErrNoLeader
	}
	return nil
}

// barrier makes the FSM current for consistent reads in term.
func (n *raftNode) barrier(term uint64) error {
	if err := n.raft.Barrier(raftApplyTimeout).Error(); err != nil {
		return err
	}
	if n.raft.CurrentTerm() != term {
		return api.ErrNoLeader
	}
	n.readyTerm.Store(term)
	return nil
}

// LeaderConn returns a connection to the current leader, waiting up to
// 5s (or ctx) for one: api.ErrNoLeader when there is none, and
// api.ErrNotLeader when this server leads (the caller should have run
// the call here).
func (n *raftNode) LeaderConn(ctx context.Context) (*grpc.ClientConn, error) {
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for {
		addr, id := n.raft.LeaderWithID()
		if addr != "" && id != n.self {
			return n.conns.get(string(addr), n.creds)
		}
		if addr != "" && id == n.self && n.IsLeader() {
			return nil, api.ErrNotLeader
		}
		select {
		case <-ctx.Done():
			return nil, api.ErrNoLeader
		case <-deadline.C:
			return nil, api.ErrNoLeader
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// connPool caches client connections to other servers by address.
type connPool struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func (p *connPool) get(addr string, creds func() credentials.TransportCredentials) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	// Servers come back fast; gRPC's default reconnect backoff (up to 120s)
	// would keep forwards failing long after a restarted leader is up.
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		}))
	if err != nil {
		return nil, err
	}
	if p.conns == nil {
		p.conns = make(map[string]*grpc.ClientConn)
	}
	p.conns[addr] = c
	return c, nil
}

func (p *connPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func parseStat(stats map[string]string, k string) uint64 {
	v, _ := strconv.ParseUint(stats[k], 10, 64)
	return v
}

// describe fills in st what Raft knows of this server: its state, the
// leader, term and indexes, the configuration, and whether it is healthy
// (a leader is known, this server heard from it recently or leads, and
// the site exists).
func (n *raftNode) describe(st *apipb.StatusResponse) {
	stats := n.raft.Stats()
	addr, leader := n.raft.LeaderWithID()
	st.State = stateName(n.raft.State())
	st.LeaderId, st.LeaderAddress = string(leader), string(addr)
	st.Term, st.CommitIndex = parseStat(stats, "term"), parseStat(stats, "commit_index")
	st.AppliedIndex = n.raft.AppliedIndex()
	lc := n.raft.LastContact()
	if !lc.IsZero() && n.raft.State() != raft.Leader {
		st.LastContact = durationpb.New(time.Since(lc))
	}
	st.Peers, _ = n.Peers()
	fresh := n.raft.State() == raft.Leader || (!lc.IsZero() && time.Since(lc) < 3*n.heartbeat)
	st.Healthy = leader != "" && fresh && n.store.Site() != nil && n.store.Halted() == nil
}

func stateName(st raft.RaftState) string {
	switch st {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	}
	return "shutdown"
}

// Peers lists the Raft configuration.
func (n *raftNode) Peers() ([]*apipb.RaftPeer, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	_, leader := n.raft.LeaderWithID()
	var out []*apipb.RaftPeer
	for _, srv := range f.Configuration().Servers {
		out = append(out, &apipb.RaftPeer{
			Id: string(srv.ID), Address: string(srv.Address),
			Voter: srv.Suffrage == raft.Voter, Leader: srv.ID == leader,
		})
	}
	return out, nil
}

func (n *raftNode) findPeer(id string) (raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return raft.Server{}, err
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == id {
			return srv, nil
		}
	}
	return raft.Server{}, fmt.Errorf("server %q: %w: %w", id, errNoSuchPeer, state.ErrNotFound)
}

// RemovePeer removes a server from the Raft configuration (leader only).
func (n *raftNode) RemovePeer(ctx context.Context, id string) error {
	if _, err := n.findPeer(id); err != nil {
		return err
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, raftApplyTimeout).Error(); err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	n.log.Info("server removed", "peer", id)
	return nil
}

// checkNewServer refuses a joining server whose ID or address is already
// in the configuration.
func (n *raftNode) checkNewServer(id, addr string) error {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == id {
			return fmt.Errorf("server %q is already a member; if it lost its data, run `strait operator raft remove-peer %s` first: %w", id, id, state.ErrConflict)
		}
		if string(srv.Address) == addr {
			return fmt.Errorf("address %s is already used by server %q: %w", addr, srv.ID, state.ErrConflict)
		}
	}
	return nil
}

// addNonvoter adds a server that does not vote yet, and returns the log
// index of the change.
func (n *raftNode) addNonvoter(id, addr string) (uint64, error) {
	af := n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, raftApplyTimeout)
	if err := af.Error(); err != nil {
		return 0, fmt.Errorf("add server %s: %w", id, err)
	}
	return af.Index(), nil
}

// Promote makes a caught-up non-voter a voter (leader only).
func (n *raftNode) Promote(ctx context.Context, node string, applied uint64) error {
	if !n.IsLeader() {
		return api.ErrNotLeader
	}
	srv, err := n.findPeer(node)
	if err != nil {
		return err
	}
	if srv.Suffrage == raft.Voter {
		return nil
	}
	if err := n.raft.AddVoter(srv.ID, srv.Address, 0, raftApplyTimeout).Error(); err != nil {
		return fmt.Errorf("promote %s: %w", node, err)
	}
	n.log.Info("server promoted to voter", "peer", node, "applied_index", applied)
	return nil
}

// Leave removes a server at its own request (leader only).
func (n *raftNode) Leave(ctx context.Context, node string) error {
	if !n.IsLeader() {
		return api.ErrNotLeader
	}
	if raft.ServerID(node) == n.self {
		return errors.New("the leader cannot remove itself; transfer leadership first")
	}
	return n.RemovePeer(ctx, node)
}

// raftAdmin is what the Operator and Cluster services manage: the Raft
// node's membership, with this server's status, the CA, and the signing
// of a joining server's SVID.
type raftAdmin struct {
	*raftNode
	s *Server
}

// Status describes this server.
func (a raftAdmin) Status() *apipb.StatusResponse { return a.s.Status() }

// Join admits a new server whose token the API consumed: it signs the
// server's SVID and adds it as a non-voter. It becomes a voter when it
// asks, once caught up (promoteLoop).
func (a raftAdmin) Join(ctx context.Context, req *apipb.JoinRequest) (*apipb.JoinResponse, error) {
	if err := a.checkNewServer(req.NodeId, req.Address); err != nil {
		return nil, err
	}
	s := a.s
	root, err := s.auth.CA()
	if err != nil {
		return nil, err
	}
	sid, err := trust.ServerID(s.id.td, req.NodeId)
	if err != nil {
		return nil, err
	}
	cert, err := root.SignCSR(sid, req.Csr, s.cfg.Now(), s.cfg.ServerSVIDTTL)
	if err != nil {
		return nil, &api.FieldError{Field: "csr", Rule: err.Error()}
	}
	idx, err := a.addNonvoter(req.NodeId, req.Address)
	if err != nil {
		return nil, err
	}
	site := a.store.Site()
	return &apipb.JoinResponse{
		Site:        site.Site,
		TrustDomain: site.TrustDomain,
		Svid:        [][]byte{cert.Raw},
		Bundle:      [][]byte{site.Root.Certificate},
		Kek:         s.id.kek.Raw(),
		Index:       idx,
	}, nil
}
