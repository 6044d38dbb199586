package peering

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust/bundleendpoint"
	"github.com/straitmesh/strait/trust/mtls"
)

// Calls from this site's servers to a peer's: each authenticates with this
// server's SVID, verified there against this site's bundle, and verifies
// the peer's servers against the peer's bundle.

// NotifyUnpeer tells a removed peer's servers, so that they remove the
// peering too.
func (m *Manager) NotifyUnpeer(ctx context.Context, f *statepb.ForeignBundle) error {
	return errors.Join(m.callPeer(ctx, f, 10*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := apipb.NewFederationClient(conn).Unpeer(ctx, &apipb.UnpeerRequest{})
		if status.Code(err) == codes.NotFound {
			return nil
		}
		return err
	})...)
}

// CheckIntention asks the peer's servers, by way of their gateways first,
// for their decision on a connection from this site to their service
// ns/svc. ErrPeerUnreachable when none answers.
func (m *Manager) CheckIntention(ctx context.Context, f *statepb.ForeignBundle, ns, svc string) (*apipb.CheckIntentionResponse, error) {
	var resp *apipb.CheckIntentionResponse
	errs := m.callPeer(ctx, f, 5*time.Second, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = apipb.NewIntentionsClient(conn).CheckFromPeer(ctx, &apipb.CheckPeerIntentionRequest{Namespace: ns, Service: svc})
		return err
	})
	switch {
	case resp != nil:
		return resp, nil
	case len(errs) == 0:
		return nil, refuse(ErrPeerUnreachable, "peer %s: no address known", f.PeerName)
	}
	return nil, refuse(ErrPeerUnreachable, "peer %s did not answer: %v", f.PeerName, errors.Join(errs...))
}

// callPeer makes call on the peer's servers with this server's SVID, one
// address after another (gateways first), each within timeout, until one
// succeeds; it returns the errors of the addresses tried before (all of
// them when none succeeded, none when no address is known).
func (m *Manager) callPeer(ctx context.Context, f *statepb.ForeignBundle, timeout time.Duration, call func(context.Context, *grpc.ClientConn) error) (errs []error) {
	for _, t := range m.peerTargets(f) {
		conn, err := m.peerConn(f, t)
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

// peerCreds are the TLS credentials for calling a peer's servers: this
// server's SVID, and the peer's servers verified against its bundle; sni,
// when set, routes the connection through a gateway.
func (m *Manager) peerCreds(f *statepb.ForeignBundle, sni string) (credentials.TransportCredentials, error) {
	td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
	if err != nil {
		return nil, err
	}
	b, err := bundleendpoint.Parse(td, f.Bundle)
	if err != nil {
		return nil, err
	}
	ident := mtls.NewIdentity(b.X509Bundle(), m.cfg.Now)
	sv := m.cfg.Identity.SVID()
	if err := ident.SetSVID(sv.Certificates, sv.PrivateKey); err != nil {
		return nil, err
	}
	cfg := mtls.ClientConfig(ident, authorizeServerOf(td), mtls.ProtoGRPC)
	cfg.ServerName = sni
	return credentials.NewTLS(cfg), nil
}

// peerTarget is a way to a peer's servers: through one of its gateways
// (sni set: the gateway passes the connection through undecrypted) or,
// as a fallback, straight to a server.
type peerTarget struct{ addr, sni string }

func (t peerTarget) String() string {
	if t.sni != "" {
		return t.addr + " (gateway)"
	}
	return t.addr
}

// peerTargets lists the ways to a peer's servers, gateways first: the
// live list from replication, those known at the join, then servers.
func (m *Manager) peerTargets(f *statepb.ForeignBundle) []peerTarget {
	var out []peerTarget
	seen := map[string]bool{}
	add := func(addr, sni string) {
		if !seen[addr] {
			seen[addr] = true
			out = append(out, peerTarget{addr, sni})
		}
	}
	sni := meshname.ServersSNI(f.TrustDomain)
	if imp, ok := m.cfg.Store.PeerImport(f.PeerName); ok {
		for _, a := range imp.Gateways {
			add(a, sni)
		}
	}
	for _, a := range f.PeerGateways {
		add(a, sni)
	}
	for _, a := range f.PeerAddresses {
		add(a, "")
	}
	return out
}

// peerConn returns a new connection to a peer's servers by way of t.
func (m *Manager) peerConn(f *statepb.ForeignBundle, t peerTarget) (*grpc.ClientConn, error) {
	if _, _, err := net.SplitHostPort(t.addr); err != nil {
		return nil, err
	}
	creds, err := m.peerCreds(f, t.sni)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(t.addr, m.dialOptions(creds)...)
}

func (m *Manager) dialOptions(creds credentials.TransportCredentials) []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if m.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(m.cfg.Dialer))
	}
	return opts
}

// PeerBundles is the federated bundle source of a server's identity: the
// bundles of peer sites only (not other foreign bundles), each verifying
// only its own trust domain.
type PeerBundles struct {
	Store interface {
		ForeignBundle(td string) (*statepb.ForeignBundle, bool)
	}
}

var _ x509bundle.Source = PeerBundles{}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (p PeerBundles) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	f, ok := p.Store.ForeignBundle(td.Name())
	if !ok || f.PeerName == "" {
		return nil, fmt.Errorf("%s is not a peer", td)
	}
	b, err := bundleendpoint.Parse(td, f.Bundle)
	if err != nil {
		return nil, err
	}
	return b.X509Bundle(), nil
}
