package api

import (
	"context"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/peeraddr"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust/bundleendpoint"
)

// federationService serves the Federation API (a type of its own: its
// method names overlap the Cluster service's).
type federationService struct {
	apipb.UnimplementedFederationServer
	*Server
}

// DefaultInviteTTL is the life of a federation token when none is given.
const DefaultInviteTTL = 15 * time.Minute

// PeerOf describes a peering stored as a foreign bundle.
func PeerOf(f *statepb.ForeignBundle) *apipb.Peer {
	return &apipb.Peer{Name: f.PeerName, Site: f.PeerSite, TrustDomain: f.TrustDomain, Addresses: f.PeerAddresses,
		BundleEndpointUrl: f.EndpointUrl, Bundle: ForeignStatus(f)}
}

func (s federationService) CreateInvite(ctx context.Context, req *apipb.CreateInviteRequest) (*apipb.CreateInviteResponse, error) {
	if req.Peer != "" {
		if err := validLabel("peer", req.Peer); err != nil {
			return nil, err
		}
		if site := s.cfg.Store.Site(); site != nil && req.Peer == site.Site {
			return nil, fieldErr("peer", "%q is this site's own name; name the site you invite", req.Peer)
		}
		for _, f := range s.cfg.Store.ForeignBundles() {
			if f.PeerName == req.Peer {
				return nil, fieldErr("peer", "a peer named %q exists (trust domain %s); choose another name or remove it first", req.Peer, f.TrustDomain)
			}
		}
	}
	ttl := DefaultInviteTTL
	if req.Ttl != nil {
		if err := req.Ttl.CheckValid(); err != nil {
			return nil, fieldErr("ttl", "%v", err)
		}
		if ttl = req.Ttl.AsDuration(); ttl < time.Minute || ttl > 7*24*time.Hour {
			return nil, fieldErr("ttl", "%s is outside 1m to 168h", ttl)
		}
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.CreateInviteResponse, error) {
		return apipb.NewFederationClient(c).CreateInvite(ctx, req)
	}); ok {
		return r, err
	}
	return s.cfg.Peering.CreateInvite(ctx, req.Peer, ttl)
}

// peerAddrsOnLoopback reports whether this site runs on loopback, so that
// its peers may announce loopback addresses (see peeraddr).
func (s *Server) peerAddrsOnLoopback() bool {
	peers, err := s.cfg.Operator.Peers()
	if err != nil {
		return false
	}
	addrs := make([]string, 0, len(peers))
	for _, p := range peers {
		addrs = append(addrs, p.Address)
	}
	return peeraddr.OnLoopback(addrs)
}

func (s federationService) Join(ctx context.Context, req *apipb.JoinFederationRequest) (*apipb.JoinFederationResponse, error) {
	if req.Name != "" {
		if err := validLabel("name", req.Name); err != nil {
			return nil, err
		}
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.JoinFederationResponse, error) {
		return apipb.NewFederationClient(c).Join(ctx, req)
	}); ok {
		return r, err
	}
	f, err := s.cfg.Peering.Join(ctx, req.Token, req.Name)
	if err != nil {
		return nil, err
	}
	return &apipb.JoinFederationResponse{Peer: PeerOf(f)}, nil
}

// Accept is the issuer's side of a join: the caller proves possession of
// the invite's secret (consumed through Raft) and hands over its bundle.
func (s federationService) Accept(ctx context.Context, req *apipb.AcceptRequest) (*apipb.AcceptResponse, error) {
	td, err := spiffeid.TrustDomainFromString(req.TrustDomain)
	if err != nil {
		return nil, fieldErr("trust_domain", "%v", err)
	}
	if err := meshname.ValidLabel(req.Site); err != nil {
		return nil, fieldErr("site", "%v", err)
	}
	if u, err := url.Parse(req.BundleEndpointUrl); err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fieldErr("bundle_endpoint_url", "%q is not an https URL", req.BundleEndpointUrl)
	}
	if len(req.Addresses) == 0 {
		return nil, fieldErr("addresses", "need 1 to %d addresses", peeraddr.MaxAddresses)
	}
	loopback := s.peerAddrsOnLoopback()
	if err := peeraddr.CheckList(req.Addresses, loopback); err != nil {
		return nil, fieldErr("addresses", "%v", err)
	}
	if err := peeraddr.CheckList(req.Gateways, loopback); err != nil {
		return nil, fieldErr("gateways", "%v", err)
	}
	if _, err := bundleendpoint.Parse(td, req.Bundle); err != nil {
		return nil, fieldErr("bundle", "%v", err)
	}
	if req.RequestedName != "" {
		if err := meshname.ValidLabel(req.RequestedName); err != nil {
			return nil, fieldErr("requested_name", "%v", err)
		}
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.AcceptResponse, error) {
		return apipb.NewFederationClient(c).Accept(ctx, req)
	}); ok {
		return r, err
	}
	secret, _ := ctx.Value(secretKey).(string)
	name, err := s.cfg.Peering.Accept(ctx, secret, req)
	if err != nil {
		return nil, err
	}
	return &apipb.AcceptResponse{Name: name}, nil
}

// List describes peerings. It is answered by the leader when there is
// one, since only the leader knows the streams' runtime state; by this
// server's replica otherwise.
func (s federationService) List(ctx context.Context, req *apipb.ListPeersFedRequest) (*apipb.ListPeersFedResponse, error) {
	if req.Name != "" {
		if err := validLabel("name", req.Name); err != nil {
			return nil, err
		}
	}
	if r, ok, err := forwardRead(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.ListPeersFedResponse, error) {
		return apipb.NewFederationClient(c).List(ctx, req)
	}); ok && err == nil {
		return r, nil
	}
	resp := &apipb.ListPeersFedResponse{}
	for _, f := range s.cfg.Store.ForeignBundles() {
		if f.PeerName != "" && (req.Name == "" || req.Name == f.PeerName) {
			resp.Peers = append(resp.Peers, s.peerStatus(PeerOf(f)))
		}
	}
	if req.Name != "" && len(resp.Peers) == 0 {
		return nil, toStatus(notFound("peer %q", req.Name))
	}
	return resp, nil
}

func (s federationService) Remove(ctx context.Context, req *apipb.RemovePeeringRequest) (*apipb.RemovePeeringResponse, error) {
	if err := validLabel("name", req.Name); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.RemovePeeringResponse, error) {
		return apipb.NewFederationClient(c).Remove(ctx, req)
	}); ok {
		return r, err
	}
	for _, f := range s.cfg.Store.ForeignBundles() {
		if f.PeerName == req.Name {
			cmd := &statepb.Command{Cmd: &statepb.Command_DeleteForeignBundle{DeleteForeignBundle: &statepb.DeleteForeignBundle{TrustDomain: f.TrustDomain}}}
			if _, _, err := s.apply(ctx, cmd); err != nil {
				return nil, err
			}
			// Tell the peer, so that it removes the peering too; if it
			// cannot be reached, it keeps a stale peering it can remove.
			if err := s.cfg.Peering.NotifyUnpeer(ctx, f); err != nil {
				s.cfg.Logger.Warn("peer not told of the removal; remove the peering there too", "peer", f.PeerName, "err", err)
			}
			return &apipb.RemovePeeringResponse{}, nil
		}
	}
	return nil, toStatus(notFound("peer %q", req.Name))
}

// Unpeer removes the peering of the calling peer site.
func (s federationService) Unpeer(ctx context.Context, req *apipb.UnpeerRequest) (*apipb.UnpeerResponse, error) {
	td, _ := ctx.Value(peerTDKey).(string)
	if !s.cfg.Raft.IsLeader() {
		conn, err := s.cfg.Raft.LeaderConn(ctx)
		if err != nil {
			return nil, err
		}
		ctx = metadata.NewOutgoingContext(ctx, metadata.Pairs(peerTDHeader, td))
		return apipb.NewFederationClient(conn).Unpeer(ctx, req)
	}
	f, ok := s.cfg.Store.ForeignBundle(td)
	if !ok || f.PeerName == "" {
		return nil, toStatus(notFound("peering with %s", td))
	}
	cmd := &statepb.Command{Cmd: &statepb.Command_DeleteForeignBundle{DeleteForeignBundle: &statepb.DeleteForeignBundle{TrustDomain: td}}}
	if _, _, err := s.apply(ctx, cmd); err != nil {
		return nil, err
	}
	s.cfg.Logger.Info("peer removed the peering", "peer", f.PeerName, "trust_domain", td)
	return &apipb.UnpeerResponse{}, nil
}
