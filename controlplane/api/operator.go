package api

import (
	"context"

	"google.golang.org/grpc"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust/ca"
)

// operatorService serves the Operator API.
type operatorService struct {
	apipb.UnimplementedOperatorServer
	*Server
	node Operator
}

// clusterService serves the Cluster API: server membership, between the
// site's servers.
type clusterService struct {
	apipb.UnimplementedClusterServer
	*Server
	node Cluster
}

func (s operatorService) Status(ctx context.Context, req *apipb.StatusRequest) (*apipb.StatusResponse, error) {
	return s.node.Status(), nil
}

func (s operatorService) ListPeers(ctx context.Context, req *apipb.ListPeersRequest) (*apipb.ListPeersResponse, error) {
	peers, err := s.node.Peers()
	if err != nil {
		return nil, err
	}
	return &apipb.ListPeersResponse{Peers: peers}, nil
}

func (s operatorService) RemovePeer(ctx context.Context, req *apipb.RemovePeerRequest) (*apipb.RemovePeerResponse, error) {
	if err := validLabel("id", req.Id); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.RemovePeerResponse, error) {
		return apipb.NewOperatorClient(c).RemovePeer(ctx, req)
	}); ok {
		return r, err
	}
	if err := s.node.RemovePeer(ctx, req.Id); err != nil {
		return nil, err
	}
	return &apipb.RemovePeerResponse{}, nil
}

// RotateCA starts a CA rotation: a new root is prepared now and signs
// after the propagation delay.
func (s operatorService) RotateCA(ctx context.Context, req *apipb.RotateCARequest) (*apipb.RotateCAResponse, error) {
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.RotateCAResponse, error) {
		return apipb.NewOperatorClient(c).RotateCA(ctx, req)
	}); ok {
		return r, err
	}
	st, err := s.cfg.Authority.RotateCA(ctx)
	if err != nil {
		return nil, err
	}
	return &apipb.RotateCAResponse{Prepared: st}, nil
}

func (s operatorService) CAStatus(ctx context.Context, req *apipb.CAStatusRequest) (*apipb.CAStatusResponse, error) {
	return s.cfg.Authority.CAStatus()
}

// Join admits a new server: it validates the request, consumes the
// single-use server token through Raft, and lets the node sign the
// server's SVID and add it as a non-voter.
func (s clusterService) Join(ctx context.Context, req *apipb.JoinRequest) (*apipb.JoinResponse, error) {
	if err := meshname.ValidLabel(req.NodeId); err != nil {
		return nil, fieldErr("node_id", "%v", err)
	}
	if err := validateHostPort("address", req.Address); err != nil {
		return nil, err
	}
	if _, err := ca.ParseCSR(req.Csr); err != nil {
		return nil, fieldErr("csr", "%v", err)
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.JoinResponse, error) {
		return apipb.NewClusterClient(c).Join(ctx, req)
	}); ok {
		return r, err
	}
	rec, err := s.consumeToken(ctx, apipb.TokenKind_TOKEN_KIND_SERVER, "not a valid server join token: create one with `strait token create --kind server`", nil)
	if err != nil {
		return nil, err
	}
	s.cfg.Logger.Info("server joining", "node", req.NodeId, "address", req.Address, "token_accessor", rec.Token.AccessorId)
	return s.node.Join(ctx, req)
}

func (s clusterService) Promote(ctx context.Context, req *apipb.PromoteRequest) (*apipb.PromoteResponse, error) {
	node, _ := ctx.Value(serverNodeKey).(string)
	if err := s.node.Promote(ctx, node, req.AppliedIndex); err != nil {
		return nil, err
	}
	return &apipb.PromoteResponse{}, nil
}

func (s clusterService) Leave(ctx context.Context, req *apipb.LeaveRequest) (*apipb.LeaveResponse, error) {
	node, _ := ctx.Value(serverNodeKey).(string)
	if err := s.node.Leave(ctx, node); err != nil {
		return nil, err
	}
	return &apipb.LeaveResponse{}, nil
}
