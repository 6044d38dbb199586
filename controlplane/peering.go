package controlplane

import (
	"context"
	"crypto"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/peering"
	"github.com/straitmesh/strait/federation/replication"
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
		Consensus: n, Store: s.store, Identity: n, Invites: n, Imports: n, Exports: s.store,
		Site: s.id.node.Site, TrustDomain: s.id.td, BundleAddr: bundleAddr, Advertise: s.advertise,
		NewSecret: newInviteSecret, ValidateImport: api.ValidateImportedChange, Dialer: s.cfg.PeerDialer,
		Heartbeat: s.cfg.PeerHeartbeat, StaleAfter: s.cfg.PeerStaleAfter,
		MaxServices: s.cfg.PeerMaxServices, MaxInstances: s.cfg.PeerMaxInstances, MaxImportBytes: s.cfg.PeerMaxImportBytes,
		ResyncTimeout: s.cfg.PeerResyncTimeout, MaxStreams: s.cfg.PeerMaxStreams,
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
	_ peering.Invites   = peeringNode{}
	_ peering.Imports   = peeringNode{}
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

func (n peeringNode) CommitInvite(ctx context.Context, tok *apipb.Token, secret, peer string) error {
	h := state.HashSecret(secret)
	rec := state.NewTokenRecord(tok, h[:], peer)
	_, _, err := n.s.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_CreateToken{CreateToken: rec}})
	return err
}

func (n peeringNode) Invite(secret string, now time.Time) (peering.Invite, bool) {
	h := state.HashSecret(secret)
	rec, ok := n.s.store.TokenBySecret(h)
	if !ok || rec.Token.Kind != apipb.TokenKind_TOKEN_KIND_FEDERATION {
		return peering.Invite{}, false
	}
	return peering.Invite{Token: rec.Token, Peer: rec.PeerName, SecretHash: h[:], Unusable: state.Usable(rec.Token, now)}, true
}

// CommitImport commits a peer's batch, its services' virtual IPs drawn
// from the site's range.
func (n peeringNode) CommitImport(ctx context.Context, rb *replication.Batch) error {
	b := &state.ImportBatch{Peer: rb.Peer, Version: rb.Version, Resync: rb.Resync, Changes: rb.Changes,
		Gateways: rb.Gateways, VirtualIPCIDR: n.s.cfg.VirtualIPCIDR}
	if l := rb.Limits; l != nil {
		b.Limits = &statepb.ImportLimits{MaxServices: l.MaxServices, MaxInstances: l.MaxInstances, MaxBytes: l.MaxBytes}
	}
	// Refused here, a batch over quota never reaches the log; the state
	// machine checks again, for the batches that do.
	if err := n.s.store.CheckImport(b); err != nil {
		return err
	}
	_, _, err := n.s.Apply(ctx, state.ImportCommand(b))
	if errors.Is(err, state.ErrNotFound) {
		return replication.ErrPeerGone
	}
	return err
}

func (n peeringNode) ImportsWithoutVIP(peer string) int {
	return n.s.store.ImportUsage(peer).WithoutVIP
}

func (n peeringNode) ImportedSize(c *apipb.Change) int64 { return state.ImportedSize(c) }
