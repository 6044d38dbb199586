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
	"github.com/straitmesh/strait/controlplane/mux"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/mtls"
)

var _ api.Node = (*Server)(nil)

// Version is the server's version, set at build time.
var Version = "dev"

// IsLeader implements api.Node.
func (s *Server) IsLeader() bool { return s.raft.State() == raft.Leader }

// Apply implements api.Node.
func (s *Server) Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error) {
	if s.raft.State() != raft.Leader {
		return nil, 0, api.ErrNotLeader
	}
	if cmd.Time == nil {
		cmd.Time = timestamppb.New(s.cfg.Now())
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
	f := s.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		return nil, 0, err
	}
	s.metrics.apply.Observe(time.Since(start).Seconds())
	res, ok := f.Response().(state.Result)
	if !ok {
		return nil, f.Index(), fmt.Errorf("apply: unexpected result %T", f.Response())
	}
	return res.Value, f.Index(), res.Err
}

// ConsistentRead implements api.Node. A read is linearizable when this
// server leads, has applied every entry committed before its term (a
// barrier committed in this term proves it), and still leads in the same
// term after confirming with a quorum. A server leads at most once per
// term, so checking the term also catches a lost-and-regained leadership
// that a notification could have missed.
func (s *Server) ConsistentRead(ctx context.Context) error {
	if s.raft.State() != raft.Leader {
		return api.ErrNotLeader
	}
	term := s.raft.CurrentTerm()
	if s.readyTerm.Load() != term {
		if err := s.barrier(term); err != nil {
			return err
		}
	}
	if err := s.raft.VerifyLeader().Error(); err != nil {
		return err
	}
	if s.raft.CurrentTerm() != term {
		return api.ErrNoLeader
	}
	return nil
}

// barrier makes the FSM current for consistent reads in term.
func (s *Server) barrier(term uint64) error {
	if err := s.raft.Barrier(raftApplyTimeout).Error(); err != nil {
		return err
	}
	if s.raft.CurrentTerm() != term {
		return api.ErrNoLeader
	}
	s.readyTerm.Store(term)
	return nil
}

// LeaderConn implements api.Node: it waits up to 5s (or ctx) for a leader.
func (s *Server) LeaderConn(ctx context.Context) (*grpc.ClientConn, error) {
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for {
		addr, id := s.raft.LeaderWithID()
		if addr != "" && id != raft.ServerID(s.id.node.NodeID) {
			return s.conns.get(string(addr), s.clientCreds)
		}
		if addr != "" && id == raft.ServerID(s.id.node.NodeID) && s.raft.State() == raft.Leader {
			return nil, api.ErrNotLeader // the caller should have run it here
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

func (s *Server) clientCreds() credentials.TransportCredentials {
	return credentials.NewTLS(mtls.ClientConfig(s.ident, s.authorizeServer, mux.ProtoGRPC))
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

// Heartbeat implements api.Node.
func (s *Server) Heartbeat(ctx context.Context, k *apipb.InstanceKey) error {
	if s.raft.State() != raft.Leader {
		return api.ErrNotLeader
	}
	return s.ttl.beat(ctx, k)
}

func parseStat(stats map[string]string, k string) uint64 {
	v, _ := strconv.ParseUint(stats[k], 10, 64)
	return v
}

// Status implements api.Node.
func (s *Server) Status() *apipb.StatusResponse {
	stats := s.raft.Stats()
	addr, leader := s.raft.LeaderWithID()
	st := &apipb.StatusResponse{
		Site:          s.id.node.Site,
		TrustDomain:   s.id.td.Name(),
		NodeId:        s.id.node.NodeID,
		State:         stateName(s.raft.State()),
		LeaderId:      string(leader),
		LeaderAddress: string(addr),
		Term:          parseStat(stats, "term"),
		CommitIndex:   parseStat(stats, "commit_index"),
		AppliedIndex:  s.raft.AppliedIndex(),
		Version:       Version,
		SvidExpires:   s.auth.SVIDExpires(),
		DnsAddress:    s.dnsAddress(),
	}
	lc := s.raft.LastContact()
	if !lc.IsZero() && s.raft.State() != raft.Leader {
		st.LastContact = durationpb.New(time.Since(lc))
	}
	st.Peers, _ = s.Peers()
	svcs, insts := s.store.Counts()
	st.Services, st.Instances = uint32(svcs), uint32(insts)
	fresh := s.raft.State() == raft.Leader || (!lc.IsZero() && time.Since(lc) < 3*s.cfg.Raft.Heartbeat)
	st.Healthy = leader != "" && fresh && s.store.Site() != nil
	return st
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

// Peers implements api.Node.
func (s *Server) Peers() ([]*apipb.RaftPeer, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	_, leader := s.raft.LeaderWithID()
	var out []*apipb.RaftPeer
	for _, srv := range f.Configuration().Servers {
		out = append(out, &apipb.RaftPeer{
			Id: string(srv.ID), Address: string(srv.Address),
			Voter: srv.Suffrage == raft.Voter, Leader: srv.ID == leader,
		})
	}
	return out, nil
}

func (s *Server) findPeer(id string) (raft.Server, error) {
	f := s.raft.GetConfiguration()
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

// RemovePeer implements api.Node.
func (s *Server) RemovePeer(ctx context.Context, id string) error {
	if _, err := s.findPeer(id); err != nil {
		return err
	}
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, raftApplyTimeout).Error(); err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	s.log.Info("server removed", "peer", id)
	return nil
}

// Join implements api.Node: sign the new server's SVID and add it as a
// non-voter. It becomes a voter when it asks, once caught up.
func (s *Server) Join(ctx context.Context, req *apipb.JoinRequest) (*apipb.JoinResponse, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == req.NodeId {
			return nil, fmt.Errorf("server %q is already a member; if it lost its data, run `strait operator raft remove-peer %s` first: %w", req.NodeId, req.NodeId, state.ErrConflict)
		}
		if string(srv.Address) == req.Address {
			return nil, fmt.Errorf("address %s is already used by server %q: %w", req.Address, srv.ID, state.ErrConflict)
		}
	}
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
	af := s.raft.AddNonvoter(raft.ServerID(req.NodeId), raft.ServerAddress(req.Address), 0, raftApplyTimeout)
	if err := af.Error(); err != nil {
		return nil, fmt.Errorf("add server %s: %w", req.NodeId, err)
	}
	site := s.store.Site()
	return &apipb.JoinResponse{
		Site:        site.Site,
		TrustDomain: site.TrustDomain,
		Svid:        [][]byte{cert.Raw},
		Bundle:      [][]byte{site.Root.Certificate},
		Kek:         s.id.kek.Raw(),
		Index:       af.Index(),
	}, nil
}

// Promote implements api.Node.
func (s *Server) Promote(ctx context.Context, node string, applied uint64) error {
	if s.raft.State() != raft.Leader {
		return api.ErrNotLeader
	}
	srv, err := s.findPeer(node)
	if err != nil {
		return err
	}
	if srv.Suffrage == raft.Voter {
		return nil
	}
	if err := s.raft.AddVoter(srv.ID, srv.Address, 0, raftApplyTimeout).Error(); err != nil {
		return fmt.Errorf("promote %s: %w", node, err)
	}
	s.log.Info("server promoted to voter", "peer", node, "applied_index", applied)
	return nil
}

// Leave implements api.Node.
func (s *Server) Leave(ctx context.Context, node string) error {
	if s.raft.State() != raft.Leader {
		return api.ErrNotLeader
	}
	if node == s.id.node.NodeID {
		return errors.New("the leader cannot remove itself; transfer leadership first")
	}
	return s.RemovePeer(ctx, node)
}
