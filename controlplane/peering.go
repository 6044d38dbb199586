package controlplane

import (
	"context"
	"crypto"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/peering"
)

// Peering (invites, joins, unpeering, the replication streams, foreign
// bundle refresh) is a component of its own, federation/peering; the
// server builds it once its identity is known and runs its leader work
// while it leads. peeringNode adapts the server to what it needs.

// newPeering builds the server's peering component (after its identity).
func (s *Server) newPeering() (*peering.Manager, error) {
	bundleAddr := s.cfg.BundleAddr
	if s.cfg.BundleListener != nil {
		bundleAddr = s.cfg.BundleListener.Addr().String()
	}
	n := peeringNode{s}
	return peering.New(peering.Config{
		Consensus: n, Store: s.store, Identity: n, Exports: s.store,
		Site: s.id.node.Site, TrustDomain: s.id.td, BundleAddr: bundleAddr, Advertise: s.advertise,
		NewSecret: newInviteSecret, ValidateImport: api.ValidateImportedChange, Dialer: s.cfg.PeerDialer,
		Heartbeat: s.cfg.PeerHeartbeat, StaleAfter: s.cfg.PeerStaleAfter,
		MaxServices: s.cfg.PeerMaxServices, MaxInstances: s.cfg.PeerMaxInstances, MaxImportBytes: s.cfg.PeerMaxImportBytes,
		ResyncTimeout: s.cfg.PeerResyncTimeout, MaxStreams: s.cfg.PeerMaxStreams, VirtualIPCIDR: s.cfg.VirtualIPCIDR,
		ForeignWebRoots: s.cfg.ForeignWebRoots, Logger: s.log, Registerer: s.cfg.Registerer, Now: s.cfg.Now,
	})
}

// newInviteSecret makes an invite's secret and accessor ID in the API's
// token format.
func newInviteSecret() (secret, accessor string, err error) {
	if secret, err = api.NewSecret(); err != nil {
		return "", "", err
	}
	accessor, err = api.NewAccessorID()
	return secret, accessor, err
}

// peeringNode is the server as federation/peering sees it.
type peeringNode struct{ s *Server }

var (
	_ peering.Consensus = peeringNode{}
	_ peering.Identity  = peeringNode{}
	_ peering.Store     = (*state.Store)(nil)
)

func (n peeringNode) Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error) {
	return n.s.Apply(ctx, cmd)
}

func (n peeringNode) ServerAddresses() ([]string, error) {
	peers, err := n.s.Peers()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range peers {
		out = append(out, p.Address)
	}
	return out, nil
}

func (n peeringNode) SVID() *x509svid.SVID { return n.s.ident.SVID() }

func (n peeringNode) InviteSigner() (crypto.Signer, error) {
	root, err := n.s.auth.CA()
	if err != nil {
		return nil, err
	}
	return root.Signer(), nil
}

func (n peeringNode) BundleDoc() ([]byte, uint64, error) { return n.s.ownBundleDoc() }
