package controlplane

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/mux"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/peeraddr"
	"github.com/straitmesh/strait/federation/token"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/bundleendpoint"
	"github.com/straitmesh/strait/trust/mtls"
)

// Federation by invitation: site A issues a token (CreateInvite) carrying
// its bundle, bundle endpoint and server addresses, signed by its CA, with
// a single-use secret. Site B redeems it (JoinFederation): it checks the
// token, reaches A's servers over TLS verified against the bundle in the
// token, presents the secret and its own bundle and endpoint (Accept, on
// A). Both sides then hold each other's bundle as a peering, refreshed from
// the bundle endpoints like any foreign bundle.

// bundleURL is the https URL peers fetch this site's bundle from.
func (s *Server) bundleURL() (string, error) {
	addr := s.cfg.BundleAddr
	if s.cfg.BundleListener != nil {
		addr = s.cfg.BundleListener.Addr().String()
	}
	if addr == "" {
		return "", status.Error(codes.FailedPrecondition, "federation needs this site's bundle endpoint: set bundle_endpoint_addr (--bundle-addr) on the servers")
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "https://" + addr + "/", nil // a host name
	}
	if ap.Addr().IsUnspecified() {
		adv, err := netip.ParseAddrPort(s.advertise)
		if err != nil {
			return "", err
		}
		ap = netip.AddrPortFrom(adv.Addr(), ap.Port())
	}
	return "https://" + ap.String() + "/", nil
}

func (s *Server) serverAddresses() ([]string, error) {
	peers, err := s.Peers()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range peers {
		out = append(out, p.Address)
	}
	return out, nil
}

// onLoopback reports whether this site's servers all run on loopback (dev
// sites, the demo, tests): only then may peers announce loopback addresses
// to it (see peeraddr.Check).
func (s *Server) onLoopback() bool {
	addrs, err := s.serverAddresses()
	return err == nil && peeraddr.OnLoopback(addrs)
}

// peerFacing is what a peer needs to trust and reach this site: the
// bundle endpoint URL, the bundle document and the servers' addresses.
func (s *Server) peerFacing() (url string, bundle []byte, addrs []string, err error) {
	if url, err = s.bundleURL(); err != nil {
		return
	}
	own, err := s.OwnBundle()
	if err != nil {
		return
	}
	if bundle, err = own.Marshal(); err != nil {
		return
	}
	addrs, err = s.serverAddresses()
	return
}

// CreateInvite implements api.Node.
func (s *Server) CreateInvite(ctx context.Context, peer string, ttl time.Duration) (*apipb.CreateInviteResponse, error) {
	url, doc, addrs, err := s.peerFacing()
	if err != nil {
		return nil, err
	}
	secret, err := api.NewSecret()
	if err != nil {
		return nil, err
	}
	accessor, err := api.NewAccessorID()
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	expires := timestamppb.New(now.Add(ttl))
	h := state.HashSecret(secret)
	rec := state.NewTokenRecord(&apipb.Token{
		AccessorId: accessor, Kind: apipb.TokenKind_TOKEN_KIND_FEDERATION, Description: "federation invite " + peer,
		CreateTime: timestamppb.New(now), ExpireTime: expires, MaxUses: 1,
	}, h[:], peer)
	if _, _, err := s.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_CreateToken{CreateToken: rec}}); err != nil {
		return nil, err
	}
	root, err := s.siteCA()
	if err != nil {
		return nil, err
	}
	tok, err := token.Encode(&apipb.FederationInvite{
		Version: 1, Site: s.id.node.Site, TrustDomain: s.id.td.Name(), Bundle: doc, BundleEndpointUrl: url,
		Addresses: addrs, Secret: secret, Expires: expires, Peer: peer, Gateways: s.store.GatewayAddresses(),
	}, root.Signer())
	if err != nil {
		return nil, err
	}
	return &apipb.CreateInviteResponse{Token: tok, Expires: expires, AccessorId: accessor}, nil
}

// JoinFederation implements api.Node.
func (s *Server) JoinFederation(ctx context.Context, tok, name string) (*statepb.ForeignBundle, error) {
	inv, peerBundle, err := token.Decode(tok, s.cfg.Now())
	if err != nil {
		return nil, &api.FieldError{Field: "token", Rule: err.Error()}
	}
	name = cmp.Or(name, inv.Site)
	if err := api.CheckPeerFree(s.store, s.id.td, name, inv.TrustDomain); err != nil {
		return nil, err
	}
	url, doc, addrs, err := s.peerFacing()
	if err != nil {
		return nil, err
	}
	// The token is signed by the issuer, which is the peer: what it
	// announces is checked like anything else a peer says.
	loopback := s.onLoopback()
	if err := peeraddr.CheckList(inv.Addresses, loopback); err != nil {
		return nil, &api.FieldError{Field: "token", Rule: "server addresses: " + err.Error()}
	}
	if err := peeraddr.CheckList(inv.Gateways, loopback); err != nil {
		return nil, &api.FieldError{Field: "token", Rule: "gateway addresses: " + err.Error()}
	}
	peerTD := peerBundle.TrustDomain()
	ident := mtls.NewIdentity(peerBundle.X509Bundle(), s.cfg.Now)
	authorize := func(id spiffeid.ID) error {
		if !trust.IsServer(id, peerTD) {
			return fmt.Errorf("%s is not a server of %s", id, peerTD)
		}
		return nil
	}
	req := &apipb.AcceptRequest{Site: s.id.node.Site, TrustDomain: s.id.td.Name(), Bundle: doc, BundleEndpointUrl: url, Addresses: addrs,
		RequestedName: inv.Peer, Gateways: s.store.GatewayAddresses()}
	var targets []peerTarget
	for _, a := range inv.Gateways {
		targets = append(targets, peerTarget{a, meshname.ServersSNI(inv.TrustDomain)})
	}
	for _, a := range inv.Addresses {
		targets = append(targets, peerTarget{a, ""})
	}
	var errs []error
	for _, t := range targets {
		cfg := mtls.ClientConfig(ident, authorize, mux.ProtoGRPC)
		cfg.ServerName = t.sni
		verify := cfg.VerifyPeerCertificate
		cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			if err := verify(raw, chains); err != nil {
				return fmt.Errorf("the server there is not signed by the token's bundle (was the issuing site rebuilt since, or is another site at that address?): %w", err)
			}
			return nil
		}
		err := s.acceptAt(ctx, t.addr, credentials.NewTLS(cfg), inv.Secret, req)
		if err == nil {
			errs = nil
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", t, err))
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unavailable && st.Code() != codes.DeadlineExceeded {
			break // the issuer answered: no point asking another of its servers
		}
	}
	if len(errs) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "the site that issued the token refused or could not be reached: %v", errors.Join(errs...))
	}
	seq, _ := peerBundle.SequenceNumber()
	f := &statepb.ForeignBundle{
		TrustDomain: inv.TrustDomain, EndpointUrl: inv.BundleEndpointUrl, EndpointSpiffeId: trust.BundleEndpointID(peerTD).String(),
		Bundle: inv.Bundle, Sequence: seq, PeerName: name, PeerSite: inv.Site, PeerAddresses: inv.Addresses, PeerGateways: inv.Gateways,
	}
	if _, _, err := s.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_AddPeer{AddPeer: &statepb.AddPeer{Peer: f}}}); err != nil {
		return nil, err
	}
	s.log.Info("joined federation", "peer", name, "trust_domain", inv.TrustDomain)
	return f, nil
}

func (s *Server) acceptAt(ctx context.Context, addr string, creds credentials.TransportCredentials, secret string, req *apipb.AcceptRequest) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if s.cfg.PeerDialer != nil {
		opts = append(opts, grpc.WithContextDialer(s.cfg.PeerDialer))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
	_, err = apipb.NewFederationClient(conn).Accept(ctx, req)
	return err
}

// peerBundles is the federated bundle source of the server's identity:
// the bundles of peer sites only (not other foreign bundles), each
// verifying only its own trust domain.
type peerBundles struct{ s *Server }

func (p peerBundles) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	f, ok := p.s.store.ForeignBundle(td.Name())
	if !ok || f.PeerName == "" {
		return nil, fmt.Errorf("%s is not a peer", td)
	}
	b, err := bundleendpoint.Parse(td, f.Bundle)
	if err != nil {
		return nil, err
	}
	return b.X509Bundle(), nil
}

// NotifyUnpeer implements api.Node: it calls Unpeer on the peer's servers
// with this server's SVID, verified there against this site's bundle.
func (s *Server) NotifyUnpeer(ctx context.Context, f *statepb.ForeignBundle) error {
	return errors.Join(s.callPeer(ctx, f, 10*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := apipb.NewFederationClient(conn).Unpeer(ctx, &apipb.UnpeerRequest{})
		if status.Code(err) == codes.NotFound {
			return nil
		}
		return err
	})...)
}

// callPeer makes call on the peer's servers with this server's SVID, one
// address after another (gateways first), each within timeout, until one
// succeeds; it returns the errors of the addresses tried before (all of
// them when none succeeded, none when no address is known).
func (s *Server) callPeer(ctx context.Context, f *statepb.ForeignBundle, timeout time.Duration, call func(context.Context, *grpc.ClientConn) error) (errs []error) {
	for _, t := range s.peerTargets(f) {
		conn, err := s.peerConn(f, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err = call(cctx, conn)
		cancel()
		conn.Close()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", t, err))
	}
	return errs
}
