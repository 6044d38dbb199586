package peering

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/replication"
	"github.com/straitmesh/strait/federation/token"
	"github.com/straitmesh/strait/trust/ca"
)

// testSite is one site of one server without Raft: commands apply straight
// to a real store, and its identity is a real CA. A fake of Consensus,
// Identity, Invites and Imports is enough here: these tests check the Manager's own decisions
// (what it refuses, with which error kind, and what it commits). The real
// path (Raft, the API, TLS between two sites, replication) is covered by
// controlplane's multi-site tests (TestFederation*, TestPeering*,
// TestReplication*).
type testSite struct {
	t     testing.TB
	name  string
	td    spiffeid.TrustDomain
	root  *ca.CA
	store *state.Store
	addrs []string
	now   time.Time

	mu sync.Mutex // serializes Apply
}

func newTestSite(t testing.TB, name string, addrs ...string) *testSite {
	t.Helper()
	now := time.Now()
	td := spiffeid.RequireTrustDomainFromString(name + ".strait")
	root, err := ca.Generate(td, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := &testSite{t: t, name: name, td: td, root: root, store: state.NewStore(0), addrs: addrs, now: now}
	s.apply(&statepb.Command{Cmd: &statepb.Command_Bootstrap{Bootstrap: &statepb.Bootstrap{
		Site: name, TrustDomain: td.Name(), Root: &statepb.CARoot{Certificate: root.Certificate().Raw}}}})
	return s
}

func (s *testSite) Apply(_ context.Context, cmd *statepb.Command) (any, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cmd.Time == nil {
		cmd.Time = timestamppb.New(s.now)
	}
	idx := s.store.Index() + 1
	v, err := s.store.ApplyCommand(idx, cmd)
	return v, idx, err
}

func (s *testSite) apply(cmd *statepb.Command) {
	s.t.Helper()
	if _, _, err := s.Apply(context.Background(), cmd); err != nil {
		s.t.Fatal(err)
	}
}

func (s *testSite) ServerAddresses() ([]string, error) { return s.addrs, nil }

// SVID is never asked for: no test here dials a peer with it.
func (s *testSite) SVID() *x509svid.SVID { return nil }

func (s *testSite) InviteSigner() (crypto.Signer, error) { return s.root.Signer(), nil }

func (s *testSite) BundleDoc() ([]byte, uint64, error) {
	doc, err := spiffebundle.FromX509Authorities(s.td, []*x509.Certificate{s.root.Certificate()}).Marshal()
	return doc, 0, err
}

func (s *testSite) CommitInvite(ctx context.Context, tok *apipb.Token, secret, peer string) error {
	h := state.HashSecret(secret)
	_, _, err := s.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_CreateToken{CreateToken: state.NewTokenRecord(tok, h[:], peer)}})
	return err
}

func (s *testSite) Invite(secret string, now time.Time) (Invite, bool) {
	h := state.HashSecret(secret)
	rec, ok := s.store.TokenBySecret(h)
	if !ok || rec.Token.Kind != apipb.TokenKind_TOKEN_KIND_FEDERATION {
		return Invite{}, false
	}
	return Invite{Token: rec.Token, Peer: rec.PeerName, SecretHash: h[:], Unusable: state.Usable(rec.Token, now)}, true
}

// CommitImport is never called: no test here runs an importer (the
// multi-site tests in controlplane do, through the server's adapter).
func (s *testSite) CommitImport(context.Context, *replication.Batch) error {
	return errors.New("the test site commits no imports")
}

func (s *testSite) ImportsWithoutVIP(peer string) int { return s.store.ImportUsage(peer).WithoutVIP }

func (s *testSite) ImportedSize(c *apipb.Change) int64 { return state.ImportedSize(c) }

func (s *testSite) manager(t testing.TB) *Manager {
	t.Helper()
	m, err := New(Config{
		Consensus: s, Store: s.store, Identity: s, Invites: s, Imports: s, Exports: s.store, Site: s.name, TrustDomain: s.td,
		BundleAddr: "0.0.0.0:8443", Advertise: s.addrs[0],
		NewSecret:      func() (string, string, error) { return "strait_secret-" + s.name, "acc-" + s.name, nil },
		ValidateImport: func(*apipb.Change) error { return nil },
		Now:            func() time.Time { return s.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// addPeer records a peering without an invite (as a joiner does).
func (s *testSite) addPeer(name, td string, addrs ...string) *statepb.ForeignBundle {
	f := &statepb.ForeignBundle{TrustDomain: td, Bundle: []byte("{}"), PeerName: name, PeerSite: name, PeerAddresses: addrs}
	s.apply(&statepb.Command{Cmd: &statepb.Command_AddPeer{AddPeer: &statepb.AddPeer{Peer: f}}})
	return f
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New accepted an empty config")
	}
}

func TestBundleURL(t *testing.T) {
	for _, tt := range []struct{ name, addr, advertise, want string }{
		{"unspecified address takes the advertised IP", "0.0.0.0:8443", "10.0.0.1:7400", "https://10.0.0.1:8443/"},
		{"an address is kept", "10.0.0.9:8443", "10.0.0.1:7400", "https://10.0.0.9:8443/"},
		{"a host name is kept", "bundle.example.com:443", "10.0.0.1:7400", "https://bundle.example.com:443/"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := &Manager{cfg: Config{BundleAddr: tt.addr, Advertise: tt.advertise}}
			if got, err := m.bundleURL(); err != nil || got != tt.want {
				t.Fatalf("bundleURL = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	m := &Manager{cfg: Config{Advertise: "10.0.0.1:7400"}}
	if _, err := m.bundleURL(); !errors.Is(err, ErrNoBundleEndpoint) {
		t.Fatalf("without a bundle endpoint: %v, want ErrNoBundleEndpoint", err)
	}
}

// TestCreateInvite: the token carries what a joiner needs, signed by the
// site CA, and its single-use record is committed under the peer's name.
func TestCreateInvite(t *testing.T) {
	a := newTestSite(t, "aws-east", "10.0.0.1:7400", "10.0.0.2:7400")
	resp, err := a.manager(t).CreateInvite(context.Background(), "gcp", 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	inv, b, err := token.Decode(resp.Token, a.now)
	if err != nil {
		t.Fatal(err)
	}
	if inv.Site != "aws-east" || inv.Peer != "gcp" || b.TrustDomain() != a.td || inv.BundleEndpointUrl != "https://10.0.0.1:8443/" ||
		len(inv.Addresses) != 2 || inv.Secret != "strait_secret-aws-east" {
		t.Fatalf("invite %v", inv)
	}
	rec, ok := a.store.TokenBySecret(state.HashSecret(inv.Secret))
	if !ok || rec.PeerName != "gcp" || rec.Token.MaxUses != 1 || rec.Token.Kind != apipb.TokenKind_TOKEN_KIND_FEDERATION || rec.Token.AccessorId != resp.AccessorId {
		t.Fatalf("token record %v, %v", rec, ok)
	}
}

// TestJoinRefusals: a join that cannot succeed is refused with the error
// kind the API maps to a status, before anything is committed.
func TestJoinRefusals(t *testing.T) {
	ctx := context.Background()
	a := newTestSite(t, "aws-east", "10.0.0.1:7400")
	tokA, err := a.manager(t).CreateInvite(ctx, "", 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// A loopback site whose "servers" listen nowhere: port 1 of loopback
	// refuses connections.
	lo := newTestSite(t, "dev-a", "127.0.0.1:1")
	tokLo, err := lo.manager(t).CreateInvite(ctx, "", 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		at      *testSite
		tok     string
		wantErr error
	}{
		{"unreadable token", newTestSite(t, "gcp", "10.1.0.1:7400"), "strait-fed-garbage", new(TokenError)},
		{"own token", a, tokA.Token, ErrOwnSite},
		{"peer name taken", func() *testSite {
			s := newTestSite(t, "gcp", "10.1.0.1:7400")
			s.addPeer("aws-east", "other.strait", "10.2.0.1:7400")
			return s
		}(), tokA.Token, ErrPeerExists},
		{"trust domain federated already", func() *testSite {
			s := newTestSite(t, "gcp", "10.1.0.1:7400")
			s.addPeer("east", "aws-east.strait", "10.0.0.1:7400")
			return s
		}(), tokA.Token, ErrPeerExists},
		{"loopback addresses to a site not on loopback", newTestSite(t, "gcp", "10.1.0.1:7400"), tokLo.Token, new(TokenError)},
		{"issuer unreachable", newTestSite(t, "dev-b", "127.0.0.2:7400"), tokLo.Token, ErrIssuerUnreachable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(tt.at.store.ForeignBundles())
			_, err := tt.at.manager(t).Join(ctx, tt.tok, "")
			var te *TokenError
			if _, wantTokenErr := tt.wantErr.(*TokenError); wantTokenErr {
				if !errors.As(err, &te) {
					t.Fatalf("Join: %v, want a TokenError", err)
				}
			} else if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Join: %v, want %v", err, tt.wantErr)
			}
			if n := len(tt.at.store.ForeignBundles()); n != before {
				t.Fatalf("a refused join left %d foreign bundles, had %d", n, before)
			}
		})
	}
}

// TestAccept: the invite names the peer; a refused accept leaves the
// invite unused, an accepted one consumes it with the peering.
func TestAccept(t *testing.T) {
	ctx := context.Background()
	a := newTestSite(t, "aws-east", "10.0.0.1:7400")
	m := a.manager(t)
	inv, err := m.CreateInvite(ctx, "gcp", 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	decoded, _, err := token.Decode(inv.Token, a.now)
	if err != nil {
		t.Fatal(err)
	}
	secret := decoded.Secret
	joiner := newTestSite(t, "gcp-west", "10.1.0.1:7400")
	doc, _, err := joiner.BundleDoc()
	if err != nil {
		t.Fatal(err)
	}
	azureDoc, _, err := newTestSite(t, "azure", "10.3.0.1:7400").BundleDoc()
	if err != nil {
		t.Fatal(err)
	}
	req := func(site, td, requested string) *apipb.AcceptRequest {
		b := doc
		if td == "azure.strait" {
			b = azureDoc
		}
		return &apipb.AcceptRequest{Site: site, TrustDomain: td, Bundle: b, BundleEndpointUrl: "https://10.1.0.1:8443/",
			Addresses: []string{"10.1.0.1:7400"}, RequestedName: requested}
	}
	a.addPeer("azure", "azure.strait", "10.3.0.1:7400")
	for _, tt := range []struct {
		name, secret string
		req          *apipb.AcceptRequest
		wantErr      error
	}{
		{"unknown secret", "strait_nope", req("gcp-west", "gcp-west.strait", ""), ErrDenied},
		{"another name asked for", secret, req("gcp-west", "gcp-west.strait", "gcp-other"), ErrDenied},
		{"trust domain federated already", secret, req("gcp-west", "azure.strait", ""), ErrPeerExists},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := m.Accept(ctx, tt.secret, tt.req); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Accept: %v, want %v", err, tt.wantErr)
			}
		})
	}
	name, err := m.Accept(ctx, secret, req("gcp-west", "gcp-west.strait", "gcp"))
	if err != nil || name != "gcp" {
		t.Fatalf("Accept = %q, %v; want gcp", name, err)
	}
	if f, ok := a.store.ForeignBundle("gcp-west.strait"); !ok || f.PeerName != "gcp" || f.PeerSite != "gcp-west" {
		t.Fatalf("peering %v, %v", f, ok)
	}
	if _, err := m.Accept(ctx, secret, req("gcp-west", "gcp-west.strait", "")); !errors.Is(err, ErrDenied) {
		t.Fatalf("second use of the invite: %v, want ErrDenied", err)
	}
}

// TestAcceptRefusesThisSitesName: an invite issued without a name, taken
// by a site of the same name as this one, is refused.
func TestAcceptRefusesThisSitesName(t *testing.T) {
	ctx := context.Background()
	a := newTestSite(t, "aws-east", "10.0.0.1:7400")
	m := a.manager(t)
	inv, err := m.CreateInvite(ctx, "", 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	decoded, _, _ := token.Decode(inv.Token, a.now)
	twin := newTestSite(t, "aws-east2", "10.1.0.1:7400")
	doc, _, _ := twin.BundleDoc()
	_, err = m.Accept(ctx, decoded.Secret, &apipb.AcceptRequest{Site: "aws-east", TrustDomain: "aws-east2.strait", Bundle: doc,
		BundleEndpointUrl: "https://10.1.0.1:8443/", Addresses: []string{"10.1.0.1:7400"}})
	if !errors.Is(err, ErrOwnSite) {
		t.Fatalf("Accept: %v, want ErrOwnSite", err)
	}
}

// TestServeExportOnlyWhileLeading: peers' streams are served only while
// RunLeader runs, and only for peers.
func TestServeExportOnlyWhileLeading(t *testing.T) {
	a := newTestSite(t, "aws-east", "10.0.0.1:7400")
	m := a.manager(t)
	ctx := context.Background()
	if err := m.ServeExport(ctx, "gcp.strait", nil); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("before leading: %v, want ErrNotLeader", err)
	}
	lctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.RunLeader(lctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := m.ServeExport(ctx, "gcp.strait", nil)
		if errors.Is(err, ErrDenied) {
			break
		}
		if !errors.Is(err, ErrNotLeader) || time.Now().After(deadline) {
			t.Fatalf("while leading, a stranger's stream: %v, want ErrDenied", err)
		}
		time.Sleep(5 * time.Millisecond) // poll: RunLeader has not started yet
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("RunLeader: %v", err)
	}
	if err := m.ServeExport(ctx, "gcp.strait", nil); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("after leading: %v, want ErrNotLeader", err)
	}
}

func TestCheckIntentionWithoutAddress(t *testing.T) {
	a := newTestSite(t, "aws-east", "10.0.0.1:7400")
	f := a.addPeer("gcp", "gcp.strait")
	if _, err := a.manager(t).CheckIntention(context.Background(), f, "default", "api"); !errors.Is(err, ErrPeerUnreachable) {
		t.Fatalf("CheckIntention: %v, want ErrPeerUnreachable", err)
	}
}

// TestPeerTargets: gateways first (the live list from replication, then
// those known at the join), then servers, each address once.
func TestPeerTargets(t *testing.T) {
	a := newTestSite(t, "aws-east", "10.0.0.1:7400")
	f := &statepb.ForeignBundle{TrustDomain: "gcp.strait", PeerName: "gcp",
		PeerGateways: []string{"10.1.0.9:8443", "10.1.0.8:8443"}, PeerAddresses: []string{"10.1.0.1:7400", "10.1.0.9:8443"}}
	var got []string
	for _, tg := range a.manager(t).peerTargets(f) {
		got = append(got, tg.String())
	}
	want := []string{"10.1.0.9:8443 (gateway)", "10.1.0.8:8443 (gateway)", "10.1.0.1:7400"}
	if len(got) != len(want) {
		t.Fatalf("targets %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("targets %q, want %q", got, want)
		}
	}
}

func TestNextRefresh(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		f    *statepb.ForeignBundle
		want time.Time
	}{
		{"never tried: now", &statepb.ForeignBundle{}, time.Time{}},
		{"success: half the default hint", &statepb.ForeignBundle{LastAttempt: timestamppb.New(at)}, at.Add(defaultForeignHint / 2)},
		{"success: half the hint", &statepb.ForeignBundle{LastAttempt: timestamppb.New(at), RefreshHintSeconds: 60}, at.Add(30 * time.Second)},
		{"failure: at most 30s", &statepb.ForeignBundle{LastAttempt: timestamppb.New(at), LastError: "x"}, at.Add(maxFailureRetry)},
		{"failure: sooner with a short hint", &statepb.ForeignBundle{LastAttempt: timestamppb.New(at), LastError: "x", RefreshHintSeconds: 10}, at.Add(5 * time.Second)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextRefresh(tt.f); !got.Equal(tt.want) {
				t.Fatalf("nextRefresh = %s, want %s", got, tt.want)
			}
		})
	}
}
