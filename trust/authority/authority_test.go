package authority

// These tests run the authority against a real replica of the state
// (controlplane/state.Store) committed to by a fake Consensus that applies
// each command at once, as a single-server Raft would, under a clock the
// test moves. A fake is enough here: Raft only orders the commands, and
// the real thing (replication, leadership, the API) is covered by the
// controlplane cluster tests (TestCARotation, the JWT and bundle tests).

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/keywrap"
	"github.com/straitmesh/strait/trust/mtls"
)

var testTD = spiffeid.RequireTrustDomainFromString("alpha.test")

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// applier is the fake Consensus: it stamps each command with the clock's
// time and applies it to the store at the next index.
type applier struct {
	mu    sync.Mutex
	store *state.Store
	clock *clock
	index uint64
}

func (f *applier) Apply(_ context.Context, cmd *statepb.Command) (any, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index++
	cmd.Time = timestamppb.New(f.clock.Now())
	out, err := f.store.ApplyCommand(f.index, cmd)
	return out, f.index, err
}

var _ Consensus = (*applier)(nil)

type site struct {
	a       *Authority
	store   *state.Store
	clock   *clock
	cons    *applier
	ident   *mtls.Identity
	persist [][]*x509.Certificate // bundles passed to Persist
}

// newSite bootstraps a site in a fresh store and builds an authority for
// its first server, whose SVID comes from the first root.
func newSite(t testing.TB, edit func(*Config)) *site {
	t.Helper()
	s := &site{store: state.NewStore(0), clock: &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	s.cons = &applier{store: s.store, clock: s.clock}
	kek, err := keywrap.Generate()
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.Generate(testTD, s.clock.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := SealRoot(kek, testTD, root)
	if err != nil {
		t.Fatal(err)
	}
	boot := &statepb.Command{Cmd: &statepb.Command_Bootstrap{Bootstrap: &statepb.Bootstrap{Site: "alpha", TrustDomain: testTD.Name(), Root: sealed}}}
	if _, _, err := s.cons.Apply(context.Background(), boot); err != nil {
		t.Fatal(err)
	}
	s.ident = s.serverIdentity(t, root)
	cfg := Config{
		TrustDomain: testTD, KEK: kek, Identity: s.ident, Store: s.store, Consensus: s.cons,
		MaxLeafTTL: 73 * time.Hour, Now: s.clock.Now,
		Persist: func(_ []*x509.Certificate, _ crypto.Signer, bundle []*x509.Certificate) error {
			s.persist = append(s.persist, bundle)
			return nil
		},
	}
	if edit != nil {
		edit(&cfg)
	}
	if s.a, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *site) serverIdentity(t testing.TB, root *ca.CA) *mtls.Identity {
	t.Helper()
	key, err := ca.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	sid, err := trust.ServerID(testTD, "s1")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := root.SignX509SVID(sid, key.Public(), s.clock.Now(), 72*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ident := mtls.NewIdentity(x509bundle.FromX509Authorities(testTD, []*x509.Certificate{root.Certificate()}), s.clock.Now)
	if err := ident.SetSVID([]*x509.Certificate{leaf}, key); err != nil {
		t.Fatal(err)
	}
	return ident
}

func newCSR(t testing.TB) []byte {
	t.Helper()
	key, err := ca.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func phases(t testing.TB, a *Authority) []string {
	t.Helper()
	st, err := a.CAStatus()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range st.Roots {
		out = append(out, r.Phase)
	}
	return out
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	base := newSite(t, nil).a.cfg
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{"no trust domain", func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }},
		{"no kek", func(c *Config) { c.KEK = nil }},
		{"no identity", func(c *Config) { c.Identity = nil }},
		{"no store", func(c *Config) { c.Store = nil }},
		{"no consensus", func(c *Config) { c.Consensus = nil }},
		{"no max leaf ttl", func(c *Config) { c.MaxLeafTTL = 0 }},
		{"negative sign rate", func(c *Config) { c.SignRate = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.edit(&cfg)
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted the config")
			}
		})
	}
}

func TestBeforeBootstrap(t *testing.T) {
	s := newSite(t, nil)
	empty := state.NewStore(0)
	cfg := s.a.cfg
	cfg.Store, cfg.Registerer = empty, nil
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CA(); !errors.Is(err, ErrNotBootstrapped) {
		t.Errorf("CA: %v, want ErrNotBootstrapped", err)
	}
	if _, err := a.Authorities(); !errors.Is(err, ErrNotBootstrapped) {
		t.Errorf("Authorities: %v, want ErrNotBootstrapped", err)
	}
	if _, err := a.CAStatus(); !errors.Is(err, ErrNotBootstrapped) {
		t.Errorf("CAStatus: %v, want ErrNotBootstrapped", err)
	}
	if _, err := a.SignJWT(context.Background(), spiffeid.RequireFromString("spiffe://alpha.test/x"), []string{"aud"}, time.Minute); !errors.Is(err, ErrNotBootstrapped) {
		t.Errorf("SignJWT: %v, want ErrNotBootstrapped", err)
	}
	if err := a.renewSVID(); !errors.Is(err, ErrNotBootstrapped) {
		t.Errorf("renewSVID: %v, want ErrNotBootstrapped", err)
	}
	// The pin falls back to the root this server trusts.
	if a.TokenPin() != s.a.TokenPin() || a.TokenPin() == "" {
		t.Errorf("TokenPin before bootstrap %q, want the trusted root's %q", a.TokenPin(), s.a.TokenPin())
	}
}

func TestSignSVID(t *testing.T) {
	s := newSite(t, func(c *Config) { c.SignRate = 4 }) // burst 1
	id := spiffeid.RequireFromString("spiffe://alpha.test/ns/default/svc/web")
	root, err := s.a.CA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := s.a.SignSVID(context.Background(), id, newCSR(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.IssuedBy(cert, root.Certificate()) || cert.URIs[0].String() != id.String() {
		t.Fatalf("signed %v by %x, want %s by the active root", cert.URIs, cert.AuthorityKeyId, id)
	}
	if _, err := s.a.SignSVID(context.Background(), id, []byte("not a csr"), time.Hour); err == nil {
		t.Fatal("signed a malformed CSR")
	}
	// The burst is spent: a caller that cannot wait for the next token is
	// refused with ErrSignRateLimited (ResourceExhausted at the API) rather
	// than queued.
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if _, err := s.a.SignSVID(ctx, id, newCSR(t), time.Hour); !errors.Is(err, ErrSignRateLimited) || !strings.HasPrefix(err.Error(), "signing rate limit (") {
		t.Fatalf("over the signing rate: %v, want ErrSignRateLimited", err)
	}
}

func TestRotation(t *testing.T) {
	s := newSite(t, func(c *Config) { c.CAPropagationDelay = time.Hour })
	ctx := context.Background()
	first, err := s.a.CA()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.a.RotateCA(ctx); err != nil {
		t.Fatal(err)
	}
	if got := phases(t, s.a); !slices.Equal(got, []string{"active", "prepared"}) {
		t.Fatalf("after RotateCA: %v", got)
	}
	if _, err := s.a.RotateCA(ctx); err == nil {
		t.Fatal("a second rotation was prepared while one is pending")
	}
	// The prepared root is trusted at once, but does not sign yet.
	if err := s.a.syncBundle(s.store.Site()); err != nil {
		t.Fatal(err)
	}
	if n := len(s.ident.Bundle().X509Authorities()); n != 2 {
		t.Fatalf("server trusts %d roots, want 2", n)
	}
	if !ca.IssuedBy(s.ident.SVID().Certificates[0], first.Certificate()) {
		t.Fatal("server SVID re-issued before the new root activated")
	}

	// Not due yet: nothing happens.
	s.clock.advance(59 * time.Minute)
	if err := s.a.rotateStep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := phases(t, s.a); !slices.Equal(got, []string{"active", "prepared"}) {
		t.Fatalf("before the propagation delay: %v", got)
	}

	// Activate: the new root signs, the server's SVID follows at once.
	s.clock.advance(time.Minute)
	if err := s.a.rotateStep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := phases(t, s.a); !slices.Equal(got, []string{"active", "retired"}) {
		t.Fatalf("after activation: %v", got)
	}
	second, err := s.a.CA()
	if err != nil {
		t.Fatal(err)
	}
	if second.Certificate().Equal(first.Certificate()) {
		t.Fatal("the active root did not change")
	}
	if err := s.a.syncBundle(s.store.Site()); err != nil {
		t.Fatal(err)
	}
	if !ca.IssuedBy(s.ident.SVID().Certificates[0], second.Certificate()) {
		t.Fatal("server SVID not re-issued by the new root")
	}
	if len(s.persist) == 0 {
		t.Fatal("the renewed identity was not persisted")
	}
	auth, err := s.a.Authorities()
	if err != nil || len(auth) != 2 || !auth[0].Equal(second.Certificate()) {
		t.Fatalf("Authorities = %d roots (err %v), want the new root first of 2", len(auth), err)
	}

	// Drop the retired root once its leaves have all expired.
	s.clock.advance(73 * time.Hour)
	if err := s.a.rotateStep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := phases(t, s.a); !slices.Equal(got, []string{"active"}) {
		t.Fatalf("after the drop: %v", got)
	}
}

func TestRotationStartsAt80PercentOfLife(t *testing.T) {
	s := newSite(t, nil)
	root, err := s.a.CA()
	if err != nil {
		t.Fatal(err)
	}
	c := root.Certificate()
	life := c.NotAfter.Sub(c.NotBefore)
	s.clock.now = c.NotBefore.Add(life*4/5 - time.Minute)
	if err := s.a.rotateStep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := phases(t, s.a); !slices.Equal(got, []string{"active"}) {
		t.Fatalf("before 80%%: %v", got)
	}
	s.clock.advance(time.Minute)
	if err := s.a.rotateStep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := phases(t, s.a); !slices.Equal(got, []string{"active", "prepared"}) {
		t.Fatalf("at 80%%: %v", got)
	}
}

func TestJWTSVID(t *testing.T) {
	s := newSite(t, nil)
	ctx := context.Background()
	id := spiffeid.RequireFromString("spiffe://alpha.test/ns/default/svc/web")
	if _, err := s.a.SignJWT(ctx, id, []string{"db"}, time.Minute); !errors.Is(err, ErrNotBootstrapped) {
		t.Fatalf("SignJWT without a key: %v, want ErrNotBootstrapped", err)
	}
	if err := s.a.ensureJWTKey(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.a.ensureJWTKey(ctx); err != nil { // a key exists: no second one
		t.Fatal(err)
	}
	keys, err := s.a.JWTAuthorities()
	if err != nil || len(keys) != 1 {
		t.Fatalf("JWTAuthorities = %d keys (err %v), want 1", len(keys), err)
	}
	tok, err := s.a.SignJWT(ctx, id, []string{"db"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	kid := parsed.Headers[0].KeyID
	var claims jwt.Claims
	if err := parsed.Claims(keys[kid], &claims); err != nil {
		t.Fatalf("token does not verify with key %q: %v", kid, err)
	}
	if claims.Subject != id.String() || !claims.Audience.Contains("db") || claims.Expiry.Time().Sub(s.clock.Now()) != time.Minute {
		t.Fatalf("claims %+v", claims)
	}

	b, err := s.a.GetBundleForTrustDomain(testTD)
	if err != nil {
		t.Fatal(err)
	}
	if seq, ok := b.SequenceNumber(); !ok || seq != s.store.Site().BundleSequence {
		t.Fatalf("bundle sequence %d (set %v), want the site's %d", seq, ok, s.store.Site().BundleSequence)
	}
	if len(b.JWTAuthorities()) != 1 || len(b.X509Authorities()) != 1 {
		t.Fatalf("bundle has %d JWT and %d X.509 authorities", len(b.JWTAuthorities()), len(b.X509Authorities()))
	}
	if _, err := s.a.GetBundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.test")); err == nil {
		t.Fatal("served a bundle for another trust domain")
	}
}

func TestBundleEndpointCertificate(t *testing.T) {
	s := newSite(t, nil)
	c1, err := s.a.BundleEndpointCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c1.Leaf.URIs[0].String(), trust.BundleEndpointID(testTD).String(); got != want {
		t.Fatalf("bundle endpoint SVID is %s, want %s", got, want)
	}
	if c2, _ := s.a.BundleEndpointCertificate(nil); c2 != c1 {
		t.Fatal("re-issued before half-life")
	}
	s.clock.advance(37 * time.Hour) // past half of 72h
	if c3, _ := s.a.BundleEndpointCertificate(nil); c3 == c1 {
		t.Fatal("not re-issued after half-life")
	}
}

func TestKEKFile(t *testing.T) {
	dir := t.TempDir()
	f := &KEKFile{Path: filepath.Join(dir, "kek")}
	ctx := context.Background()
	if _, err := f.Load(ctx, "alpha", "alpha.test"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want ErrNotExist", err)
	}
	k, err := f.LoadOrCreate(ctx, nil, "alpha", "alpha.test")
	if err != nil {
		t.Fatal(err)
	}
	again, err := f.LoadOrCreate(ctx, nil, "alpha", "alpha.test")
	if err != nil || string(again.Raw()) != string(k.Raw()) {
		t.Fatalf("second LoadOrCreate: %v, same key %v", err, err == nil && string(again.Raw()) == string(k.Raw()))
	}
	if _, err := f.LoadOrCreate(ctx, k.Raw(), "alpha", "alpha.test"); err != nil {
		t.Fatalf("joining with the site's own KEK: %v", err)
	}
	other, err := keywrap.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.LoadOrCreate(ctx, other.Raw(), "alpha", "alpha.test"); err == nil {
		t.Fatal("accepted a site KEK different from the file's")
	}
	joined := &KEKFile{Path: filepath.Join(dir, "joined")}
	j, err := joined.LoadOrCreate(ctx, other.Raw(), "alpha", "alpha.test")
	if err != nil || string(j.Raw()) != string(other.Raw()) {
		t.Fatalf("joining server's KEK: %v", err)
	}
}
