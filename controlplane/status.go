package controlplane

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// probeTimeout bounds how long a site status waits for one server.
const probeTimeout = 2 * time.Second

// Status describes this server: its site and identity, what Raft knows
// of it, and the catalog's size.
func (s *Server) Status() *apipb.StatusResponse {
	st := &apipb.StatusResponse{
		Site:        s.id.node.Site,
		TrustDomain: s.id.td.Name(),
		NodeId:      s.id.node.NodeID,
		Version:     Version,
		SvidExpires: s.auth.SVIDExpires(),
		DnsAddress:  s.dnsAddress(),
	}
	s.node.describe(st)
	svcs, insts := s.store.Counts()
	st.Services, st.Instances = uint32(svcs), uint32(insts)
	return st
}

// dnsAddress is where this server serves mesh DNS, "" when it does not.
func (s *Server) dnsAddress() string {
	if s.cfg.DNSPacketConn != nil {
		return s.cfg.DNSPacketConn.LocalAddr().String()
	}
	return s.cfg.DNSAddr
}

// ProbeServers asks every server of the Raft configuration for its own
// status at once, each within probeTimeout. A server that does not
// answer is unreachable, whatever Raft last knew of it.
func (n *raftNode) ProbeServers(ctx context.Context) []*apipb.ServerHealth {
	peers, err := n.Peers()
	if err != nil {
		return nil
	}
	out := make([]*apipb.ServerHealth, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		h := &apipb.ServerHealth{Id: p.Id, Address: p.Address, Voter: p.Voter}
		out[i] = h
		if raft.ServerID(p.Id) == n.self {
			h.Reachable, h.Status = true, n.status()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := n.probe(ctx, p.Address)
			if err != nil {
				h.Error = probeError(err)
				return
			}
			h.Reachable, h.Status = true, st
		}()
	}
	wg.Wait()
	var commit uint64
	for _, h := range out {
		if h.Status != nil && h.Status.State == stateName(raft.Leader) {
			commit = h.Status.CommitIndex
		}
	}
	for _, h := range out {
		if h.Status != nil && commit > h.Status.AppliedIndex {
			h.LagEntries = commit - h.Status.AppliedIndex
		}
	}
	return out
}

// probe asks the server at addr for its status over the servers' mTLS.
func (n *raftNode) probe(ctx context.Context, addr string) (*apipb.StatusResponse, error) {
	conn, err := n.conns.get(addr, n.creds)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	return apipb.NewClusterClient(conn).ServerStatus(ctx, &apipb.StatusRequest{})
}

// probeError shortens gRPC's wrapping of a dial error to the dial error.
func probeError(err error) string {
	msg := status.Convert(err).Message()
	if _, dial, ok := strings.Cut(msg, "Error while dialing: "); ok {
		return strings.TrimSuffix(dial, `"`)
	}
	return msg
}
