package authority

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/jointoken"
	"github.com/straitmesh/strait/trust/keywrap"
	"github.com/straitmesh/strait/trust/mtls"
)

// ErrNotBootstrapped: the replicated state holds no site yet (or, for
// JWT-SVIDs, no signing key yet).
var ErrNotBootstrapped = errors.New("site not bootstrapped")

// Store is what the authority reads of the replicated state.
type Store interface {
	// Site is the site's identity record (roots, JWT keys, bundle
	// sequence); nil before the site is bootstrapped.
	Site() *statepb.Bootstrap
	// IdentityChanged is closed at the next change of the site's roots
	// or JWT keys.
	IdentityChanged() <-chan struct{}
}

// Consensus commits the authority's commands (new roots, root phases, JWT
// keys) to the replicated state.
type Consensus interface {
	// Apply commits cmd (leader only) and returns its result and index.
	Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error)
}

// Config configures an Authority.
type Config struct {
	// TrustDomain is the site's trust domain. Required.
	TrustDomain spiffeid.TrustDomain
	// KEK opens and seals the CA and JWT keys in the replicated state.
	// Required.
	KEK *keywrap.FileKEK
	// Identity is this server's own SVID and trust bundle, which the
	// authority keeps current. Required.
	Identity *mtls.Identity
	// Store is the local replica. Required.
	Store Store
	// Consensus commits commands. Required.
	Consensus Consensus
	// Persist writes this server's SVID chain, key and bundle to disk when
	// they change; nothing is written when nil (dev mode).
	Persist func(chain []*x509.Certificate, key crypto.Signer, bundle []*x509.Certificate) error
	// ServerSVIDTTL is the lifetime of server (and bundle endpoint) SVIDs;
	// 72h when zero.
	ServerSVIDTTL time.Duration
	// WorkloadSVIDTTL is the default lifetime of workload SVIDs; 1h when
	// zero.
	WorkloadSVIDTTL time.Duration
	// CAPropagationDelay is how long a prepared root is published before
	// it signs; 1h when zero.
	CAPropagationDelay time.Duration
	// MaxLeafTTL is the longest life of a leaf any root signs: a retired
	// root stays in the bundle this long. Required.
	MaxLeafTTL time.Duration
	// BundleRefreshHint is the refresh hint of the site's SPIFFE bundle;
	// 5m or a third of CAPropagationDelay, whichever is shorter, when zero.
	BundleRefreshHint time.Duration
	// SignRate caps X.509 and JWT signatures per second on this server
	// (burst: a quarter of it); 2000 when zero.
	SignRate int
	// Registerer for the authority's metrics; none when nil.
	Registerer prometheus.Registerer
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger; slog.Default when nil.
	Logger *slog.Logger
}

// Authority is the site authority on one server. Its methods are safe for
// concurrent use.
type Authority struct {
	cfg       Config
	log       *slog.Logger
	signLimit *rate.Limiter
	signed    prometheus.Counter
	endpoint  endpointCert

	mu   sync.Mutex // guards the opened keys below
	cert []byte     // the active root's certificate, for which ca is open
	ca   *ca.CA
	jwt  *jwtCache
}

// New validates cfg and fills its defaults. It does no I/O.
func New(cfg Config) (*Authority, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("authority: TrustDomain is required")
	case cfg.KEK == nil:
		return nil, errors.New("authority: KEK is required")
	case cfg.Identity == nil:
		return nil, errors.New("authority: Identity is required")
	case cfg.Store == nil:
		return nil, errors.New("authority: Store is required")
	case cfg.Consensus == nil:
		return nil, errors.New("authority: Consensus is required")
	case cfg.MaxLeafTTL <= 0:
		return nil, errors.New("authority: MaxLeafTTL is required")
	case cfg.SignRate < 0:
		return nil, errors.New("authority: SignRate must not be negative")
	}
	if cfg.ServerSVIDTTL == 0 {
		cfg.ServerSVIDTTL = 72 * time.Hour
	}
	if cfg.WorkloadSVIDTTL == 0 {
		cfg.WorkloadSVIDTTL = time.Hour
	}
	if cfg.CAPropagationDelay == 0 {
		cfg.CAPropagationDelay = time.Hour
	}
	if cfg.BundleRefreshHint == 0 {
		cfg.BundleRefreshHint = min(5*time.Minute, cfg.CAPropagationDelay/3)
	}
	if cfg.SignRate == 0 {
		cfg.SignRate = 2000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &Authority{
		cfg:       cfg,
		log:       cfg.Logger,
		signLimit: rate.NewLimiter(rate.Limit(cfg.SignRate), max(1, cfg.SignRate/4)),
		signed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "strait_ca_svids_signed_total", Help: "X.509-SVIDs signed by this server (agents, workloads).",
		}),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(a.signed); err != nil {
			return nil, fmt.Errorf("authority: register metrics: %w", err)
		}
	}
	return a, nil
}

// Run keeps this server's own identity current until ctx ends: it
// follows the site's roots into the trust bundle (re-issuing the SVID when
// another root signs) and renews the SVID at half-life. It runs on every
// server and returns nil when ctx ends.
func (a *Authority) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.renewLoop(ctx) })
	g.Go(func() error { return a.followIdentity(ctx) })
	return g.Wait()
}

// RunLeader does the leader's share until ctx (the leadership's context)
// ends: it commits a JWT signing key when the site has none, then takes
// CA rotation steps as they fall due. It returns nil when ctx ends.
func (a *Authority) RunLeader(ctx context.Context) error {
	if err := a.ensureJWTKey(ctx); err != nil {
		a.log.Warn("no jwt signing key", "err", err)
	}
	a.rotateLoop(ctx)
	return nil
}

// CA is the site's active (signing) CA, opened with the KEK.
func (a *Authority) CA() (*ca.CA, error) {
	site := a.cfg.Store.Site()
	if site == nil {
		return nil, ErrNotBootstrapped
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ca != nil && bytes.Equal(a.cert, site.Root.Certificate) {
		return a.ca, nil
	}
	keyDER, err := a.cfg.KEK.Open(site.Root.SealedKey, []byte(site.TrustDomain))
	if err != nil {
		return nil, fmt.Errorf("open site ca key: %w", err)
	}
	c, err := ca.Load(site.Root.Certificate, keyDER)
	if err != nil {
		return nil, err
	}
	a.cert, a.ca = site.Root.Certificate, c
	return c, nil
}

// SealRoot is root as the replicated state keeps it: its certificate and
// its key sealed under kek for td.
func SealRoot(kek *keywrap.FileKEK, td spiffeid.TrustDomain, root *ca.CA) (*statepb.CARoot, error) {
	keyDER, err := root.MarshalKey()
	if err != nil {
		return nil, err
	}
	sealed, err := kek.Seal(keyDER, []byte(td.Name()))
	if err != nil {
		return nil, err
	}
	return &statepb.CARoot{Certificate: root.Certificate().Raw, SealedKey: sealed}, nil
}

// TokenPin is the CA pin appended to server and agent join tokens: the
// active root's, which signs the servers' SVIDs (before the site exists,
// the first root this server trusts).
func (a *Authority) TokenPin() string {
	if root, err := a.CA(); err == nil {
		return jointoken.EncodePin(root.Certificate())
	}
	return jointoken.EncodePin(a.cfg.Identity.Bundle().X509Authorities()[0])
}

// Authorities are the site's trusted roots, the active (signing) one
// first.
func (a *Authority) Authorities() ([]*x509.Certificate, error) {
	site := a.cfg.Store.Site()
	if site == nil {
		return nil, ErrNotBootstrapped
	}
	return authorities(site)
}

// authorities parses the site's trusted roots, active first.
func authorities(site *statepb.Bootstrap) ([]*x509.Certificate, error) {
	ders := [][]byte{site.Root.Certificate}
	for _, r := range site.Roots {
		ders = append(ders, r.Certificate)
	}
	out := make([]*x509.Certificate, 0, len(ders))
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// WorkloadSVIDTTL is the default lifetime of workload SVIDs.
func (a *Authority) WorkloadSVIDTTL() time.Duration { return a.cfg.WorkloadSVIDTTL }

// SVIDExpires is when this server's own SVID expires; nil on a nil
// Authority (before the server has run) or without an SVID.
func (a *Authority) SVIDExpires() *timestamppb.Timestamp {
	if a == nil {
		return nil
	}
	svid := a.cfg.Identity.SVID()
	if svid == nil || len(svid.Certificates) == 0 {
		return nil
	}
	return timestamppb.New(svid.Certificates[0].NotAfter)
}
