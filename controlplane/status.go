package controlplane

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
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

// PeerIntention implements api.Node: it asks the peer's servers, by way
// of their gateways first, as NotifyUnpeer does.
func (s *Server) PeerIntention(ctx context.Context, f *statepb.ForeignBundle, ns, svc string) (*apipb.CheckIntentionResponse, error) {
	var resp *apipb.CheckIntentionResponse
	errs := s.callPeer(ctx, f, 5*time.Second, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = apipb.NewIntentionsClient(conn).CheckFromPeer(ctx, &apipb.CheckPeerIntentionRequest{Namespace: ns, Service: svc})
		return err
	})
	switch {
	case resp != nil:
		return resp, nil
	case len(errs) == 0:
		return nil, status.Errorf(codes.Unavailable, "peer %s: no address known", f.PeerName)
	}
	return nil, status.Errorf(codes.Unavailable, "peer %s did not answer: %v", f.PeerName, errors.Join(errs...))
}
