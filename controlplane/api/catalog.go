package api

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
)

// catalogService serves the Catalog API.
type catalogService struct {
	apipb.UnimplementedCatalogServer
	*Server
	node Catalog
}

// reservedNamespace refuses catalog writes by token into the namespace
// Strait's own gateways register in: a write token must not be able to
// announce a fake gateway to every peer, or keep a dead one passing.
func reservedNamespace(ns string) error {
	if ns == state.GatewayNamespace {
		return denied("namespace %q is reserved for Strait's gateways, which register through the Gateway API; use another namespace", ns)
	}
	return nil
}

func (s catalogService) Register(ctx context.Context, req *apipb.RegisterRequest) (*apipb.RegisterResponse, error) {
	if err := validateRegister(req); err != nil {
		return nil, err
	}
	if err := reservedNamespace(req.Service.Namespace); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.RegisterResponse, error) {
		return apipb.NewCatalogClient(c).Register(ctx, req)
	}); ok {
		return r, err
	}
	_, idx, err := s.apply(ctx, state.RegisterCommand(req))
	if err != nil {
		return nil, err
	}
	if in := req.Instance; in != nil && in.Ttl != nil {
		// Registration counts as the first heartbeat.
		_ = s.node.Heartbeat(ctx, &apipb.InstanceKey{Namespace: in.Namespace, Service: in.Service, Id: in.Id})
	}
	return &apipb.RegisterResponse{Index: idx}, nil
}

func (s catalogService) Deregister(ctx context.Context, req *apipb.DeregisterRequest) (*apipb.DeregisterResponse, error) {
	if err := validateServiceRef(&req.Namespace, req.Service); err != nil {
		return nil, err
	}
	if err := reservedNamespace(req.Namespace); err != nil {
		return nil, err
	}
	if req.InstanceId != "" {
		if err := validLabel("instance_id", req.InstanceId); err != nil {
			return nil, err
		}
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.DeregisterResponse, error) {
		return apipb.NewCatalogClient(c).Deregister(ctx, req)
	}); ok {
		return r, err
	}
	_, idx, err := s.apply(ctx, state.DeregisterCommand(req))
	if err != nil {
		return nil, err
	}
	return &apipb.DeregisterResponse{Index: idx}, nil
}

func (s catalogService) Heartbeat(ctx context.Context, req *apipb.HeartbeatRequest) (*apipb.HeartbeatResponse, error) {
	if err := validateServiceRef(&req.Namespace, req.Service); err != nil {
		return nil, err
	}
	if err := validLabel("instance_id", req.InstanceId); err != nil {
		return nil, err
	}
	if err := reservedNamespace(req.Namespace); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.HeartbeatResponse, error) {
		return apipb.NewCatalogClient(c).Heartbeat(ctx, req)
	}); ok {
		return r, err
	}
	err := s.node.Heartbeat(ctx, &apipb.InstanceKey{Namespace: req.Namespace, Service: req.Service, Id: req.InstanceId})
	if err != nil {
		return nil, err
	}
	return &apipb.HeartbeatResponse{}, nil
}

// readable prepares a read in the requested mode. For a consistent read on
// a follower it forwards; handled reports that the forwarded call answered.
func readable[Resp any](ctx context.Context, s *Server, mode apipb.ReadMode, call func(context.Context, *grpc.ClientConn) (Resp, error)) (Resp, bool, error) {
	var zero Resp
	switch mode {
	case apipb.ReadMode_READ_MODE_LOCAL:
		return zero, false, nil
	case apipb.ReadMode_READ_MODE_CONSISTENT:
		if r, ok, err := forwardRead(ctx, s, call); ok {
			return r, true, err
		}
		return zero, false, s.cfg.Raft.ConsistentRead(ctx)
	}
	return zero, true, fieldErr("mode", "unknown read mode %d", mode)
}

func (s catalogService) ListServices(ctx context.Context, req *apipb.ListServicesRequest) (*apipb.ListServicesResponse, error) {
	if req.Namespace != "" {
		if err := validLabel("namespace", req.Namespace); err != nil {
			return nil, err
		}
	}
	if r, ok, err := readable(ctx, s.Server, req.Mode, func(ctx context.Context, c *grpc.ClientConn) (*apipb.ListServicesResponse, error) {
		return apipb.NewCatalogClient(c).ListServices(ctx, req)
	}); ok || err != nil {
		return r, err
	}
	sums, idx := s.store().ServiceSummaries(req.Namespace)
	stale := make(map[string]bool)
	for i, sum := range sums {
		peer := sum.Service.Peer
		if peer == "" {
			continue
		}
		st, ok := stale[peer]
		if !ok {
			st = s.importState(peer).State == apipb.PeerState_PEER_STATE_STALE
			stale[peer] = st
		}
		if st {
			c := proto.Clone(sum).(*apipb.ServiceSummary)
			c.Stale = true
			sums[i] = c
		}
	}
	return &apipb.ListServicesResponse{Services: sums, Index: idx}, nil
}

func (s catalogService) GetService(ctx context.Context, req *apipb.GetServiceRequest) (*apipb.GetServiceResponse, error) {
	if err := validateServiceRef(&req.Namespace, req.Name); err != nil {
		return nil, err
	}
	if req.Peer != "" {
		if err := validLabel("peer", req.Peer); err != nil {
			return nil, err
		}
	}
	if r, ok, err := readable(ctx, s.Server, req.Mode, func(ctx context.Context, c *grpc.ClientConn) (*apipb.GetServiceResponse, error) {
		return apipb.NewCatalogClient(c).GetService(ctx, req)
	}); ok || err != nil {
		return r, err
	}
	svc, insts, idx, found := s.store().Service(state.ServiceKey{Peer: req.Peer, Namespace: req.Namespace, Name: req.Name}, req.PassingOnly)
	if !found {
		if req.Peer != "" {
			return nil, notFound("service %s/%s imported from %s", req.Namespace, req.Name, req.Peer)
		}
		return nil, notFound("service %s/%s", req.Namespace, req.Name)
	}
	resp := &apipb.GetServiceResponse{Service: svc, Instances: insts, Index: idx}
	if req.Peer != "" {
		resp.Stale = s.importState(req.Peer).State == apipb.PeerState_PEER_STATE_STALE
	}
	return resp, nil
}

func (s catalogService) Watch(req *apipb.WatchRequest, stream grpc.ServerStreamingServer[apipb.WatchEvent]) error {
	ctx := stream.Context()
	sub := s.store().Subscribe(req.FromIndex)
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
}
