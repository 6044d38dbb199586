package api

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/policy"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/ca"
)

// Intentions and gateways (see policy and gateway/).

// Gateway SVIDs are short-lived: a gateway renews at half-life, and a
// revoked gateway is refused at once by every server. Peers' gateways
// check only the certificate, so GatewaySVIDTTL is how long a revoked
// gateway can still open tunnels to peers: at most an hour.
const (
	GatewaySVIDTTL = time.Hour
	// GatewayTTL is how long a gateway stays passing in the catalog
	// without a heartbeat.
	GatewayTTL = 15 * time.Second
	// MaxIntentionDescription bounds an intention's description.
	MaxIntentionDescription = 256
)

// intentionService serves the Intentions API (its method names overlap
// the Catalog's).
type intentionService struct {
	apipb.UnimplementedIntentionsServer
	*Server
}

// gatewayService serves the Gateway API.
type gatewayService struct {
	apipb.UnimplementedGatewayServer
	*Server
	node Catalog
}

func (s intentionService) Set(ctx context.Context, req *apipb.SetIntentionRequest) (*apipb.SetIntentionResponse, error) {
	in := req.GetIntention()
	if in == nil {
		return nil, fieldErr("intention", "is required")
	}
	src, err := policy.Normalize(in.Source)
	if err != nil {
		return nil, fieldErr("intention.source", "%v", err)
	}
	if _, _, err := policy.ParseDestination(in.Destination); err != nil {
		return nil, fieldErr("intention.destination", "%v", err)
	}
	if in.Action != apipb.IntentionAction_INTENTION_ACTION_ALLOW && in.Action != apipb.IntentionAction_INTENTION_ACTION_DENY {
		return nil, fieldErr("intention.action", "must be allow or deny")
	}
	if len(in.Description) > MaxIntentionDescription {
		return nil, fieldErr("intention.description", "at most %d bytes", MaxIntentionDescription)
	}
	if in.CreateIndex != 0 || in.ModifyIndex != 0 {
		return nil, fieldErr("intention.create_index", "indexes are set by the server; leave them zero")
	}
	n := proto.Clone(in).(*apipb.Intention)
	n.Source = src
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.SetIntentionResponse, error) {
		return apipb.NewIntentionsClient(c).Set(ctx, &apipb.SetIntentionRequest{Intention: n})
	}); ok {
		return r, err
	}
	if _, _, err := s.apply(ctx, state.SetIntentionCommand(n)); err != nil {
		return nil, err
	}
	resp := &apipb.SetIntentionResponse{Intention: n, Warnings: intentionWarnings(s.store(), n)}
	for _, cur := range s.store().Intentions() {
		if cur.Source == n.Source && cur.Destination == n.Destination {
			resp.Intention = cur
		}
	}
	return resp, nil
}

// intentionWarnings says what in an intention names nothing known: a
// source site that is not a peer (nor this site), a destination service
// (or namespace) with nothing registered. Such intentions are kept (a
// peer or a service may come later), but a typo should not pass silently.
func intentionWarnings(st *state.Store, in *apipb.Intention) []string {
	var out []string
	site, _, _, _ := policy.ParseSource(in.Source)
	known := st.Site() != nil && st.Site().Site == site
	for _, f := range st.ForeignBundles() {
		known = known || f.PeerName == site
	}
	if !known {
		out = append(out, fmt.Sprintf("no peer named %s (yet): the intention applies once a peer of that name joins (see `strait federation list`)", site))
	}
	ns, svc, _ := policy.ParseDestination(in.Destination)
	if svc == "*" {
		if sums, _ := st.ServiceSummaries(ns); len(sums) == 0 {
			out = append(out, fmt.Sprintf("no service in namespace %s here (yet)", ns))
		}
	} else if _, _, _, ok := st.Service(state.ServiceKey{Namespace: ns, Name: svc}, false); !ok {
		out = append(out, fmt.Sprintf("no service %s/%s here (yet)", ns, svc))
	}
	return out
}

func (s intentionService) Delete(ctx context.Context, req *apipb.DeleteIntentionRequest) (*apipb.DeleteIntentionResponse, error) {
	src, err := policy.Normalize(req.Source)
	if err != nil {
		return nil, fieldErr("source", "%v", err)
	}
	if _, _, err := policy.ParseDestination(req.Destination); err != nil {
		return nil, fieldErr("destination", "%v", err)
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.DeleteIntentionResponse, error) {
		return apipb.NewIntentionsClient(c).Delete(ctx, &apipb.DeleteIntentionRequest{Source: src, Destination: req.Destination})
	}); ok {
		return r, err
	}
	cmd := &statepb.Command{Cmd: &statepb.Command_DeleteIntention{DeleteIntention: &statepb.DeleteIntention{Source: src, Destination: req.Destination}}}
	if _, _, err := s.apply(ctx, cmd); err != nil {
		return nil, err
	}
	return &apipb.DeleteIntentionResponse{}, nil
}

func (s intentionService) List(ctx context.Context, req *apipb.ListIntentionsRequest) (*apipb.ListIntentionsResponse, error) {
	return &apipb.ListIntentionsResponse{Intentions: s.store().Intentions()}, nil
}

func (s intentionService) Check(ctx context.Context, req *apipb.CheckIntentionRequest) (*apipb.CheckIntentionResponse, error) {
	site, ns, svc, err := policy.ParseSource(req.Source)
	if err != nil {
		return nil, fieldErr("source", "%v", err)
	}
	if ns == "*" {
		ns = ""
	}
	if svc == "*" {
		svc = ""
	}
	dns, dsvc, err := policy.ParseDestination(req.Destination)
	if err != nil || dsvc == "*" {
		return nil, fieldErr("destination", "want <namespace>/<service>")
	}
	ok, matched := policy.Decide(s.store().Intentions(), policy.Source{Site: site, Namespace: ns, Service: svc}, dns, dsvc)
	return &apipb.CheckIntentionResponse{Allowed: ok, Matched: matched}, nil
}

func (s gatewayService) Join(ctx context.Context, req *apipb.GatewayJoinRequest) (*apipb.GatewayJoinResponse, error) {
	if err := meshname.ValidLabel(req.Name); err != nil {
		return nil, fieldErr("name", "%v", err)
	}
	if _, err := ca.ParseCSR(req.Csr); err != nil {
		return nil, fieldErr("csr", "%v", err)
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.GatewayJoinResponse, error) {
		return apipb.NewGatewayClient(c).Join(ctx, req)
	}); ok {
		return r, err
	}
	rec, err := s.consumeToken(ctx, apipb.TokenKind_TOKEN_KIND_GATEWAY, "not a valid gateway token: create one with `strait token create --kind gateway`",
		func() error {
			if g, ok := s.store().Gateway(req.Name); ok && !g.Revoked {
				return exists("gateway %q has already joined; if it lost its identity, run `strait gateway revoke %s` first", req.Name, req.Name)
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	// Sign first: a gateway is recorded only with an SVID in hand.
	svid, bundle, err := s.signGateway(ctx, req.Name, req.Csr)
	if err != nil {
		return nil, err
	}
	record := &apipb.GatewayRecord{Name: req.Name, Joined: timestamppb.New(s.cfg.Now()), TokenAccessor: rec.Token.AccessorId}
	if _, _, err := s.apply(ctx, state.SetGatewayCommand(record)); err != nil {
		return nil, err
	}
	s.cfg.Logger.Info("gateway joined", "gateway", req.Name, "token_accessor", rec.Token.AccessorId)
	return &apipb.GatewayJoinResponse{TrustDomain: s.cfg.TrustDomain().Name(), Svid: svid, Bundle: bundle}, nil
}

func (s gatewayService) signGateway(ctx context.Context, name string, csr []byte) (svid, bundle [][]byte, err error) {
	id, err := trust.GatewayID(s.cfg.TrustDomain(), name)
	if err != nil {
		return nil, nil, err
	}
	cert, err := s.signSVID(ctx, id, csr, GatewaySVIDTTL)
	if err != nil {
		return nil, nil, err
	}
	auth, err := s.cfg.Authority.Authorities()
	if err != nil {
		return nil, nil, err
	}
	return [][]byte{cert.Raw}, ders(auth), nil
}

func (s gatewayService) Renew(ctx context.Context, req *apipb.RenewGatewayRequest) (*apipb.RenewGatewayResponse, error) {
	name, _ := ctx.Value(gatewayNameKey).(string)
	id, err := trust.GatewayID(s.cfg.TrustDomain(), name)
	if err != nil {
		return nil, err
	}
	release, err := s.signShare.take(id, "gateway", 1)
	if err != nil {
		return nil, err
	}
	defer release()
	svid, bundle, err := s.signGateway(ctx, name, req.Csr)
	if err != nil {
		return nil, err
	}
	return &apipb.RenewGatewayResponse{Svid: svid, Bundle: bundle}, nil
}

// Heartbeat keeps the calling gateway registered in the catalog as an
// instance of strait/gateway with its WAN address, passing for
// GatewayTTL.
// Metadata keys of a gateway's catalog instance: the peers' gateways it
// is configured for, and those it has a tunnel up to.
const (
	GatewayMetaPeerGateways   = "peer_gateways"
	GatewayMetaPeerGatewaysUp = "peer_gateways_up"
)

func (s gatewayService) Heartbeat(ctx context.Context, req *apipb.GatewayHeartbeatRequest) (*apipb.GatewayHeartbeatResponse, error) {
	name, _ := ctx.Value(gatewayNameKey).(string)
	if err := validateHostPort("wan_address", req.WanAddress); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.GatewayHeartbeatResponse, error) {
		return apipb.NewGatewayClient(c).Heartbeat(ctx, req)
	}); ok {
		return r, err
	}
	host, portS, _ := net.SplitHostPort(req.WanAddress)
	port, _ := strconv.Atoi(portS)
	key := &apipb.InstanceKey{Namespace: state.GatewayNamespace, Service: state.GatewayService, Id: name}
	// The tunnel counts ride in the instance's metadata, so that every
	// server's status shows them; they are written only when they change
	// (at most once a heartbeat), a plain heartbeat costs no Raft write.
	meta := map[string]string{
		GatewayMetaPeerGateways:   strconv.FormatUint(uint64(req.PeerGateways), 10),
		GatewayMetaPeerGatewaysUp: strconv.FormatUint(uint64(min(req.PeerGatewaysUp, req.PeerGateways)), 10),
	}
	if in, ok := s.store().Instance(key); ok && in.Address == host && in.Ports[state.GatewayWANPort] == uint32(port) &&
		in.Health == apipb.Health_HEALTH_PASSING && maps.Equal(in.Meta, meta) {
		return &apipb.GatewayHeartbeatResponse{}, s.node.Heartbeat(ctx, key)
	}
	reg := &apipb.RegisterRequest{
		Service: &apipb.Service{Namespace: state.GatewayNamespace, Name: state.GatewayService,
			Ports: []*apipb.ServicePort{{Name: state.GatewayWANPort, Protocol: apipb.Protocol_PROTOCOL_TCP}}},
		Instance: &apipb.Instance{Id: name, Address: host, Ports: map[string]uint32{state.GatewayWANPort: uint32(port)},
			Health: apipb.Health_HEALTH_PASSING, Ttl: durationpb.New(GatewayTTL), Meta: meta},
	}
	if _, _, err := s.apply(ctx, state.RegisterCommand(reg)); err != nil {
		return nil, err
	}
	// The registration is this heartbeat: without the beat, the TTL
	// tracker would take the last one it knew (or its own start) and mark
	// the gateway critical again at once.
	return &apipb.GatewayHeartbeatResponse{}, s.node.Heartbeat(ctx, key)
}

func (s gatewayService) List(ctx context.Context, req *apipb.ListGatewaysRequest) (*apipb.ListGatewaysResponse, error) {
	return &apipb.ListGatewaysResponse{Gateways: s.store().Gateways()}, nil
}

// Revoke makes every server refuse the gateway's SVID, and takes it out of
// the catalog.
func (s gatewayService) Revoke(ctx context.Context, req *apipb.RevokeGatewayRequest) (*apipb.RevokeGatewayResponse, error) {
	if err := validLabel("name", req.Name); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.RevokeGatewayResponse, error) {
		return apipb.NewGatewayClient(c).Revoke(ctx, req)
	}); ok {
		return r, err
	}
	g, ok := s.store().Gateway(req.Name)
	if !ok {
		return nil, notFound("gateway %q", req.Name)
	}
	n := proto.Clone(g).(*apipb.GatewayRecord)
	n.Revoked = true
	if _, _, err := s.apply(ctx, state.SetGatewayCommand(n)); err != nil {
		return nil, err
	}
	dereg := &apipb.DeregisterRequest{Namespace: state.GatewayNamespace, Service: state.GatewayService, InstanceId: req.Name}
	if _, _, err := s.apply(ctx, state.DeregisterCommand(dereg)); err != nil && !errors.Is(err, state.ErrNotFound) {
		return nil, err
	}
	return &apipb.RevokeGatewayResponse{}, nil
}

// CheckPeer asks a peer for its decision on a connection from this site
// to its service ns/svc (see CheckFromPeer).
func (s intentionService) CheckPeer(ctx context.Context, req *apipb.CheckPeerIntentionRequest) (*apipb.CheckIntentionResponse, error) {
	if err := validLabel("peer", req.Peer); err != nil {
		return nil, err
	}
	if err := validLabel("namespace", req.Namespace); err != nil {
		return nil, err
	}
	if err := validLabel("service", req.Service); err != nil {
		return nil, err
	}
	for _, f := range s.store().ForeignBundles() {
		if f.PeerName == req.Peer {
			release, err := s.diag.acquire(ctx, "CheckPeer")
			if err != nil {
				return nil, err
			}
			defer release()
			return s.cfg.Peering.CheckIntention(ctx, f, req.Namespace, req.Service)
		}
	}
	return nil, notFound("peer %q", req.Peer)
}

// CheckFromPeer is a calling peer site's CheckPeer: this site's decision
// for a connection from that site carrying no workload identity, which
// only intentions for any namespace and service of the site can allow.
func (s intentionService) CheckFromPeer(ctx context.Context, req *apipb.CheckPeerIntentionRequest) (*apipb.CheckIntentionResponse, error) {
	td, _ := ctx.Value(peerTDKey).(string)
	f, ok := s.store().ForeignBundle(td)
	if !ok || f.PeerName == "" {
		return nil, notFound("peering with %s", td)
	}
	if err := validLabel("namespace", req.Namespace); err != nil {
		return nil, err
	}
	if err := validLabel("service", req.Service); err != nil {
		return nil, err
	}
	ok, matched := policy.Decide(s.store().Intentions(), policy.Source{Site: f.PeerName}, req.Namespace, req.Service)
	return &apipb.CheckIntentionResponse{Allowed: ok, Matched: matched}, nil
}
