package api

import (
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// Replicate serves a peer's replication stream. The exporter runs on the
// leader; any other server hands the stream on to it, relaying both ways.
func (s federationService) Replicate(stream apipb.Federation_ReplicateServer) error {
	ctx := stream.Context()
	td, _ := ctx.Value(peerTDKey).(string)
	if s.cfg.Raft.IsLeader() {
		return s.cfg.Peering.ServeExport(ctx, td, stream)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get(forwardedHeader)) > 0 {
		return retryable(ErrNotLeader.Error() + "; leadership moved, retry")
	}
	conn, err := s.cfg.Raft.LeaderConn(ctx)
	if err != nil {
		return err
	}
	out := metadata.Pairs(forwardedHeader, "1", peerTDHeader, td)
	up, err := apipb.NewFederationClient(conn).Replicate(metadata.NewOutgoingContext(ctx, out), grpc.MaxCallRecvMsgSize(4<<20))
	if err != nil {
		return err
	}
	// Peer to leader: hello and acknowledgements.
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					up.CloseSend()
				}
				return // the context ends with the call and cancels up
			}
			if err := up.Send(m); err != nil {
				return
			}
		}
	}()
	// Leader to peer: events.
	for {
		ev, err := up.Recv()
		if err != nil {
			return err
		}
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
}

// importState is what this server's replica knows of a peer's imports.
func (s *Server) importState(peer string) *apipb.ImportStatus {
	st := &apipb.ImportStatus{State: apipb.PeerState_PEER_STATE_PENDING}
	store := s.cfg.Store
	if p, ok := store.PeerImport(peer); ok {
		st.Version, st.LastContact, st.Gateways = p.Version, p.LastContact, p.Gateways
		st.State = apipb.PeerState_PEER_STATE_ACTIVE
		if p.LastContact == nil || s.cfg.Now().Sub(p.LastContact.AsTime()) > s.cfg.Peering.StaleAfter() {
			st.State = apipb.PeerState_PEER_STATE_STALE
		}
	}
	svcs, insts := store.ImportCounts(peer)
	st.Services, st.Instances = uint32(svcs), uint32(insts)
	return st
}

// peerStatus describes a peering with its replication state; on the
// leader, with the streams' runtime state too.
func (s *Server) peerStatus(p *apipb.Peer) *apipb.Peer {
	p.Imports = s.importState(p.Name)
	p.Exports = &apipb.ExportStatus{}
	if s.cfg.Raft.IsLeader() {
		reg := s.cfg.Peering.Replication()
		p.Exports = reg.Export(p.Name).Status()
		reg.Import(p.Name).Fill(p.Imports)
	}
	p.Exports.Services = uint32(len(s.cfg.Store.ExportedServices(p.Name)))
	return p
}
