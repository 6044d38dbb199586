package peering

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/replication"
)

// Consensus is what peering needs of the site's Raft node.
type Consensus interface {
	// Apply commits cmd (on the leader) and returns the command's result
	// and log index.
	Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error)
	// ServerAddresses are the addresses of the site's servers (the Raft
	// configuration), announced to peers as a way in.
	ServerAddresses() ([]string, error)
}

// Store is what peering reads of the local replica and the changes it
// waits for.
type Store interface {
	Site() *statepb.Bootstrap
	ForeignBundle(td string) (*statepb.ForeignBundle, bool)
	ForeignBundles() []*statepb.ForeignBundle
	PeerImport(peer string) (*statepb.PeerImport, bool)
	GatewayAddresses() []string
	// IdentityChanged is closed at the next change of the site's CA,
	// JWT keys or foreign bundles (peerings included).
	IdentityChanged() <-chan struct{}
}

// Invites is where the site keeps the federation invites it issued:
// single-use tokens of its token store, each for one peer.
type Invites interface {
	// CommitInvite commits tok, a federation token whose secret is
	// secret, as the invite of a peer to be named peer (the joining
	// site's own name when empty).
	CommitInvite(ctx context.Context, tok *apipb.Token, secret, peer string) error
	// Invite finds the federation invite whose secret is secret, and
	// whether it can be used at now. ok is false when there is none
	// (unknown, revoked, or not a federation token).
	Invite(secret string, now time.Time) (inv Invite, ok bool)
}

// Invite is a federation invite as the site's token store holds it.
type Invite struct {
	Token *apipb.Token
	// Peer is the name the issuer gave the invited site; empty: its own
	// site name.
	Peer string
	// SecretHash is how the store knows the invite's secret: the AddPeer
	// command that consumes the invite names it.
	SecretHash []byte
	// Unusable is why the invite cannot be used at the time asked
	// (expired, used); nil when it can.
	Unusable error
}

// Imports is where what peers export to this site is committed: the
// site's replicated state, under the quotas on each peer's imports.
type Imports interface {
	// CommitImport commits a batch a peer's replication stream
	// delivered, or refuses it for a quota (a batch over quota never
	// reaches the log). It returns replication.ErrPeerGone once the
	// peering no longer exists.
	CommitImport(ctx context.Context, b *replication.Batch) error
	// ImportsWithoutVIP is how many of the peer's imported services hold
	// no virtual IP (the range, or the peer's share of it, was used up).
	ImportsWithoutVIP(peer string) int
	// ImportedSize is what a change counts towards the bytes quota.
	ImportedSize(c *apipb.Change) int64
}

// Identity is what peering needs of this site's identity.
type Identity interface {
	// SVID is this server's current X.509-SVID, which it presents to
	// peers' servers.
	SVID() *x509svid.SVID
	// InviteSigner is the key of the site's active CA, which signs
	// federation tokens.
	InviteSigner() (crypto.Signer, error)
	// BundleDoc is the site's SPIFFE bundle document and its sequence.
	BundleDoc() (doc []byte, sequence uint64, err error)
}

// Config configures a Manager.
type Config struct {
	// Consensus, Store and Identity are the site's Raft node, its local
	// replica and its identity; Invites and Imports keep the invites
	// this site issued and what peers export to it. Required.
	Consensus Consensus
	Store     Store
	Identity  Identity
	Invites   Invites
	Imports   Imports
	// Exports is the replica the exporters serve peers from. Required.
	Exports replication.Catalog
	// Site and TrustDomain are this site's name and trust domain. Required.
	Site        string
	TrustDomain spiffeid.TrustDomain
	// BundleAddr is the address (host:port) of this site's bundle endpoint,
	// put in invites; none when empty (then invites and joins are refused
	// with ErrNoBundleEndpoint). An unspecified IP is replaced by
	// Advertise's.
	BundleAddr string
	// Advertise is the address this server advertises (host:port).
	Advertise string
	// NewSecret makes an invite's single-use secret and the public ID of
	// its token record (the API's token format). Required.
	NewSecret func() (secret, accessor string, err error)
	// ValidateImport checks one change a peer sends before it is
	// committed. Required.
	ValidateImport func(*apipb.Change) error
	// Dialer, when set, dials peer sites' servers (tests route peer
	// traffic through an emulated WAN with it); net.Dialer when nil.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// Heartbeat is how often an idle replication stream says it is alive;
	// replication.DefaultHeartbeat when zero.
	Heartbeat time.Duration
	// StaleAfter is how long a peer's imports are served without contact
	// before they are marked stale; a minute when zero.
	StaleAfter time.Duration
	// MaxServices, MaxInstances and MaxImportBytes are the quotas on what
	// one peer's imports may hold (the state machine enforces them); no
	// quota when zero.
	MaxServices, MaxInstances int
	MaxImportBytes            int64
	// ResyncTimeout bounds how long a peer's resync may take;
	// replication.DefaultResyncTimeout when zero.
	ResyncTimeout time.Duration
	// MaxStreams caps the replication streams one peer may hold open to
	// this site; 2 when zero.
	MaxStreams int
	// ForeignWebRoots verify bundle endpoints of the https_web profile;
	// the system roots when nil.
	ForeignWebRoots *x509.CertPool
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Registerer receives the replication metrics; none when nil.
	Registerer prometheus.Registerer
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Manager invites, accepts and joins peers, unpeers, calls peers' servers,
// serves and runs the replication streams, and refreshes foreign bundles.
type Manager struct {
	cfg  Config
	log  *slog.Logger
	repl *replication.Registry
	// leading holds the context of the current leadership while RunLeader
	// runs.
	leading atomic.Pointer[context.Context]
}

// New checks cfg and returns a Manager. It does no I/O.
func New(cfg Config) (*Manager, error) {
	switch {
	case cfg.Consensus == nil, cfg.Store == nil, cfg.Identity == nil, cfg.Invites == nil, cfg.Imports == nil, cfg.Exports == nil:
		return nil, errors.New("peering: Consensus, Store, Identity, Invites, Imports and Exports are required")
	case cfg.Site == "", cfg.TrustDomain.IsZero():
		return nil, errors.New("peering: Site and TrustDomain are required")
	case cfg.NewSecret == nil, cfg.ValidateImport == nil:
		return nil, errors.New("peering: NewSecret and ValidateImport are required")
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = replication.DefaultHeartbeat
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = time.Minute
	}
	if cfg.MaxStreams == 0 {
		cfg.MaxStreams = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Manager{cfg: cfg, log: cfg.Logger, repl: replication.NewRegistry(cfg.Registerer, cfg.Now)}, nil
}

// RunLeader runs the leader's work until ctx ends, which must be when
// this server's leadership does: one importer per peering, and the
// refresh of foreign bundles. While it runs, ServeExport serves peers'
// streams. It returns nil when ctx ends.
func (m *Manager) RunLeader(ctx context.Context) error {
	m.leading.Store(&ctx)
	defer m.leading.Store(nil)
	done := make(chan struct{})
	go func() { defer close(done); m.refreshForeign(ctx) }()
	m.replicate(ctx)
	<-done
	return nil
}

// Replication is the runtime state of the replication streams.
func (m *Manager) Replication() *replication.Registry { return m.repl }

// StaleAfter is how long imports are served without contact before they
// are marked stale.
func (m *Manager) StaleAfter() time.Duration { return m.cfg.StaleAfter }
