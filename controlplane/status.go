package controlplane

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// probeTimeout bounds how long a site status waits for one server.
const probeTimeout = 2 * time.Second

// dnsAddress is where this server serves mesh DNS, "" when it does not.
func (s *Server) dnsAddress() string {
	if s.cfg.DNSPacketConn != nil {
		return s.cfg.DNSPacketConn.LocalAddr().String()
	}
	return s.cfg.DNSAddr
}

// svidExpires is when this server's own SVID expires (nil before Run).
func (s *Server) svidExpires() *timestamppb.Timestamp {
	if s.ident == nil {
		return nil
	}
	svid := s.ident.SVID()
	if svid == nil || len(svid.Certificates) == 0 {
		return nil
	}
	return timestamppb.New(svid.Certificates[0].NotAfter)
}

// ProbeServers implements api.Node: every server of the Raft
// configuration asked for its own status at once, each within
// probeTimeout. A server that does not answer is unreachable, whatever
// Raft last knew of it.
func (s *Server) ProbeServers(ctx context.Context) []*apipb.ServerHealth {
	peers, err := s.Peers()
	if err != nil {
		return nil
	}
	out := make([]*apipb.ServerHealth, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		h := &apipb.ServerHealth{Id: p.Id, Address: p.Address, Voter: p.Voter}
		out[i] = h
		if p.Id == s.id.node.NodeID {
			h.Reachable, h.Status = true, s.Status()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := s.probe(ctx, p.Address)
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
func (s *Server) probe(ctx context.Context, addr string) (*apipb.StatusResponse, error) {
	conn, err := s.conns.get(addr, s.clientCreds)
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
