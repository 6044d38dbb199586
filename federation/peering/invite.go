package peering

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
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
// a single-use secret. Site B redeems it (Join): it checks the token,
// reaches A's servers over TLS verified against the bundle in the token,
// presents the secret and its own bundle and endpoint (Accept, on A). Both
// sides then hold each other's bundle as a peering, refreshed from the
// bundle endpoints like any foreign bundle.

// bundleURL is the https URL peers fetch this site's bundle from.
func (m *Manager) bundleURL() (string, error) {
	addr := m.cfg.BundleAddr
	if addr == "" {
		return "", ErrNoBundleEndpoint
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "https://" + addr + "/", nil // a host name
	}
	if ap.Addr().IsUnspecified() {
		adv, err := netip.ParseAddrPort(m.cfg.Advertise)
		if err != nil {
			return "", err
		}
		ap = netip.AddrPortFrom(adv.Addr(), ap.Port())
	}
	return "https://" + ap.String() + "/", nil
}

// onLoopback reports whether this site's servers all run on loopback (dev
// sites, the demo, tests): only then may peers announce loopback addresses
// to it (see peeraddr.Check).
func (m *Manager) onLoopback() bool {
	addrs, err := m.cfg.Consensus.ServerAddresses()
	return err == nil && peeraddr.OnLoopback(addrs)
}

// peerFacing is what a peer needs to trust and reach this site: the
// bundle endpoint URL, the bundle document and the servers' addresses.
func (m *Manager) peerFacing() (url string, bundle []byte, addrs []string, err error) {
	if url, err = m.bundleURL(); err != nil {
		return
	}
	if bundle, _, err = m.cfg.Identity.BundleDoc(); err != nil {
		return
	}
	addrs, err = m.cfg.Consensus.ServerAddresses()
	return
}

// CreateInvite issues a federation token for a peer to be named peer
// (the joining site's name when empty), valid for ttl (leader only).
func (m *Manager) CreateInvite(ctx context.Context, peer string, ttl time.Duration) (*apipb.CreateInviteResponse, error) {
	url, doc, addrs, err := m.peerFacing()
	if err != nil {
		return nil, err
	}
	secret, accessor, err := m.cfg.NewSecret()
	if err != nil {
		return nil, err
	}
	now := m.cfg.Now()
	expires := timestamppb.New(now.Add(ttl))
	if err := m.cfg.Invites.CommitInvite(ctx, &apipb.Token{
		AccessorId: accessor, Kind: apipb.TokenKind_TOKEN_KIND_FEDERATION, Description: "federation invite " + peer,
		CreateTime: timestamppb.New(now), ExpireTime: expires, MaxUses: 1,
	}, secret, peer); err != nil {
		return nil, err
	}
	signer, err := m.cfg.Identity.InviteSigner()
	if err != nil {
		return nil, err
	}
	tok, err := token.Encode(&apipb.FederationInvite{
		Version: 1, Site: m.cfg.Site, TrustDomain: m.cfg.TrustDomain.Name(), Bundle: doc, BundleEndpointUrl: url,
		Addresses: addrs, Secret: secret, Expires: expires, Peer: peer, Gateways: m.cfg.Store.GatewayAddresses(),
	}, signer)
	if err != nil {
		return nil, err
	}
	return &apipb.CreateInviteResponse{Token: tok, Expires: expires, AccessorId: accessor}, nil
}

// Join redeems another site's federation token, naming the peer name (the
// issuer's site name when empty), and returns the peering (leader only).
func (m *Manager) Join(ctx context.Context, tok, name string) (*statepb.ForeignBundle, error) {
	inv, peerBundle, err := token.Decode(tok, m.cfg.Now())
	if err != nil {
		return nil, &TokenError{Rule: err.Error()}
	}
	name = cmp.Or(name, inv.Site)
	if err := m.checkPeerFree(name, inv.TrustDomain); err != nil {
		return nil, err
	}
	url, doc, addrs, err := m.peerFacing()
	if err != nil {
		return nil, err
	}
	// The token is signed by the issuer, which is the peer: what it
	// announces is checked like anything else a peer says.
	loopback := m.onLoopback()
	if err := peeraddr.CheckList(inv.Addresses, loopback); err != nil {
		return nil, &TokenError{Rule: "server addresses: " + err.Error()}
	}
	if err := peeraddr.CheckList(inv.Gateways, loopback); err != nil {
		return nil, &TokenError{Rule: "gateway addresses: " + err.Error()}
	}
	peerTD := peerBundle.TrustDomain()
	ident := mtls.NewIdentity(peerBundle.X509Bundle(), m.cfg.Now)
	req := &apipb.AcceptRequest{Site: m.cfg.Site, TrustDomain: m.cfg.TrustDomain.Name(), Bundle: doc, BundleEndpointUrl: url, Addresses: addrs,
		RequestedName: inv.Peer, Gateways: m.cfg.Store.GatewayAddresses()}
	var targets []peerTarget
	for _, a := range inv.Gateways {
		targets = append(targets, peerTarget{a, meshname.ServersSNI(inv.TrustDomain)})
	}
	for _, a := range inv.Addresses {
		targets = append(targets, peerTarget{a, ""})
	}
	var errs []error
	for _, t := range targets {
		cfg := mtls.ClientConfig(ident, authorizeServerOf(peerTD), mtls.ProtoGRPC)
		cfg.ServerName = t.sni
		verify := cfg.VerifyPeerCertificate
		cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			if err := verify(raw, chains); err != nil {
				return fmt.Errorf("the server there is not signed by the token's bundle (was the issuing site rebuilt since, or is another site at that address?): %w", err)
			}
			return nil
		}
		err := m.acceptAt(ctx, t.addr, credentials.NewTLS(cfg), inv.Secret, req)
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
		return nil, refuse(ErrIssuerUnreachable, "the site that issued the token refused or could not be reached: %v", errors.Join(errs...))
	}
	seq, _ := peerBundle.SequenceNumber()
	f := &statepb.ForeignBundle{
		TrustDomain: inv.TrustDomain, EndpointUrl: inv.BundleEndpointUrl, EndpointSpiffeId: trust.BundleEndpointID(peerTD).String(),
		Bundle: inv.Bundle, Sequence: seq, PeerName: name, PeerSite: inv.Site, PeerAddresses: inv.Addresses, PeerGateways: inv.Gateways,
	}
	if _, _, err := m.cfg.Consensus.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_AddPeer{AddPeer: &statepb.AddPeer{Peer: f}}}); err != nil {
		return nil, err
	}
	m.log.Info("joined federation", "peer", name, "trust_domain", inv.TrustDomain)
	return f, nil
}

// authorizeServerOf admits the servers of td only.
func authorizeServerOf(td spiffeid.TrustDomain) func(spiffeid.ID) error {
	return func(id spiffeid.ID) error {
		if !trust.IsServer(id, td) {
			return fmt.Errorf("%s is not a server of %s", id, td)
		}
		return nil
	}
}

func (m *Manager) acceptAt(ctx context.Context, addr string, creds credentials.TransportCredentials, secret string, req *apipb.AcceptRequest) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return err
	}
	conn, err := grpc.NewClient(addr, m.dialOptions(creds)...)
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

// Accept is the issuer's side of a join (leader only): the caller, who
// presented secret, hands over its site, bundle and addresses (req,
// checked by the API). The invite the secret belongs to is consumed in
// the same command that records the peering. It returns the peer's name.
func (m *Manager) Accept(ctx context.Context, secret string, req *apipb.AcceptRequest) (string, error) {
	td, err := spiffeid.TrustDomainFromString(req.TrustDomain)
	if err != nil {
		return "", err
	}
	b, err := bundleendpoint.Parse(td, req.Bundle)
	if err != nil {
		return "", err
	}
	// The invite decides the peer's name: the one the issuer gave it, or
	// else the joining site's name. A joiner asking for another (a removed
	// peer's, say) is refused, and the invite stays unused.
	inv, ok := m.cfg.Invites.Invite(secret, m.cfg.Now())
	if !ok {
		return "", refuse(ErrDenied, "the federation token is not valid here (unknown, revoked, or from another site)")
	}
	if inv.Unusable != nil {
		return "", refuse(ErrDenied, "token %v: ask for a new one", inv.Unusable)
	}
	intended := inv.Peer
	if intended == "" {
		// Invites issued before the record kept the name carry it in
		// their description only.
		intended, _ = strings.CutPrefix(inv.Token.Description, "federation invite ")
	}
	name := cmp.Or(intended, req.Site)
	if req.RequestedName != "" && req.RequestedName != name {
		return "", refuse(ErrDenied, "this invitation was issued for a peer named %q, not %q: the issuing site names its peers; ask it for a new token", name, req.RequestedName)
	}
	if site := m.cfg.Store.Site(); site != nil && name == site.Site {
		return "", refuse(ErrOwnSite, "this site is named %q too, and a peer cannot take this site's own name: ask it for a token issued with `strait federation token --peer <another name>`", name)
	}
	if err := m.checkPeerFree(name, td.Name()); err != nil {
		return "", err
	}
	seq, _ := b.SequenceNumber()
	f := &statepb.ForeignBundle{
		TrustDomain: td.Name(), EndpointUrl: req.BundleEndpointUrl, EndpointSpiffeId: trust.BundleEndpointID(td).String(),
		Bundle: req.Bundle, Sequence: seq, PeerName: name, PeerSite: req.Site, PeerAddresses: req.Addresses, PeerGateways: req.Gateways,
	}
	cmd := &statepb.Command{Cmd: &statepb.Command_AddPeer{AddPeer: &statepb.AddPeer{Peer: f, InviteSecretHash: inv.SecretHash}}}
	if _, _, err := m.cfg.Consensus.Apply(ctx, cmd); err != nil {
		return "", err
	}
	m.log.Info("site federated", "peer", name, "trust_domain", td.Name(), "token_accessor", inv.Token.AccessorId)
	return name, nil
}

// checkPeerFree reports a conflict when name or td is already federated,
// or names this site. It is a courtesy check before a join does any work:
// the state machine decides for good (AddPeer), so that of two concurrent
// joins only one can win.
func (m *Manager) checkPeerFree(name, td string) error {
	if td == m.cfg.TrustDomain.Name() {
		return refuse(ErrOwnSite, "this token was issued by this site (%s); run `strait federation join` on the other site", td)
	}
	if site := m.cfg.Store.Site(); site != nil && name == site.Site {
		return refuse(ErrOwnSite, "a peer cannot be named %q, this site's own name; pass --name to choose another", name)
	}
	for _, f := range m.cfg.Store.ForeignBundles() {
		if f.PeerName == name {
			return refuse(ErrPeerExists, "a peer named %q exists (trust domain %s); pass --name to choose another", name, f.TrustDomain)
		}
		if f.TrustDomain == td {
			return refuse(ErrPeerExists, "trust domain %s is already federated (as %q); remove it first", td, cmp.Or(f.PeerName, "a foreign bundle"))
		}
	}
	return nil
}
