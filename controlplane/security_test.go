package controlplane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/mux"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/keywrap"
	"github.com/straitmesh/strait/trust/mtls"
)

// siteCA opens the running site's real CA from the replicated state with
// the KEK in the node's data directory.
func siteCA(t *testing.T, n *controlplanetest.Node) *ca.CA {
	t.Helper()
	site := n.Server.Store().Site()
	kek, err := keywrap.LoadFile(filepath.Join(n.Dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := kek.Open(site.Root.SealedKey, []byte(site.TrustDomain))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Load(site.Root.Certificate, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// identityFrom issues an SVID for id from c, valid over [now+from, now+to].
func identityFrom(t *testing.T, c *ca.CA, bundle *x509bundle.Bundle, id spiffeid.ID, notBefore time.Time, ttl time.Duration) *mtls.Identity {
	t.Helper()
	key, err := ca.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := c.SignX509SVID(id, key.Public(), notBefore, ttl)
	if err != nil {
		t.Fatal(err)
	}
	ident := mtls.NewIdentity(bundle, nil)
	if err := ident.SetSVID([]*x509.Certificate{leaf}, key); err != nil {
		t.Fatal(err)
	}
	return ident
}

// dialRaft connects to the Raft protocol as ident and reports whether the
// server kept the connection (it waits for an RPC) or refused it.
func dialRaft(t *testing.T, addr string, ident *mtls.Identity) error {
	t.Helper()
	cfg := mtls.ClientConfig(ident, nil, mux.ProtoRaft)
	cfg.VerifyPeerCertificate = nil // this test checks the server's side only
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil // accepted: the server is waiting for a Raft RPC
	}
	return err
}

func TestRaftPortRequiresServerSVID(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{})
	n := c.Nodes[0]
	td := n.Server.TrustDomain()
	bundle := n.Server.Bundle()
	real := siteCA(t, n)
	other, err := ca.Generate(td, time.Now(), 0) // same trust domain name, another CA
	if err != nil {
		t.Fatal(err)
	}
	serverID, _ := trust.ServerID(td, "intruder")
	workloadID := spiffeid.RequireFromPath(td, "/ns/default/svc/web")
	now := time.Now()

	tests := []struct {
		name   string
		ident  *mtls.Identity
		refuse bool
	}{
		{"valid server SVID", identityFrom(t, real, bundle, serverID, now, time.Hour), false},
		{"no certificate", mtls.NewIdentity(bundle, nil), true},
		{"certificate from another CA", identityFrom(t, other, bundle, serverID, now, time.Hour), true},
		{"expired certificate", identityFrom(t, real, bundle, serverID, now.Add(-2*time.Hour), time.Hour), true},
		{"workload SVID, not a server", identityFrom(t, real, bundle, workloadID, now, time.Hour), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := dialRaft(t, n.Addr, tt.ident)
			if tt.refuse && err == nil {
				t.Fatal("connection accepted, want refused")
			}
			if !tt.refuse && err != nil {
				t.Fatalf("connection refused: %v", err)
			}
		})
	}
}

func TestAPIRefusesBadClientCertificates(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{})
	n := c.Nodes[0]
	td := n.Server.TrustDomain()
	bundle := n.Server.Bundle()
	other, err := ca.Generate(td, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/ns/default/svc/web")
	tests := []struct {
		name  string
		ident *mtls.Identity
		code  codes.Code
	}{
		{"no certificate, token authenticates", nil, codes.OK},
		{"certificate from another CA", identityFrom(t, other, bundle, id, time.Now(), time.Hour), codes.Unavailable},
		{"expired certificate", identityFrom(t, siteCA(t, n), bundle, id, time.Now().Add(-2*time.Hour), time.Hour), codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl, err := apiclient.Dial(apiclient.Config{Addr: n.Addr, Token: c.Token, CA: bundle.X509Authorities(), Identity: tt.ident})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = cl.Operator.Status(ctx, &apipb.StatusRequest{})
			if got := status.Code(err); got != tt.code {
				t.Fatalf("status: %v, want %s", err, tt.code)
			}
		})
	}
}

func TestClientRefusesServerOfAnotherSite(t *testing.T) {
	a := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "a"})
	b := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "b"})
	// Site a's CA file, site b's address: the client must not talk.
	cl, err := apiclient.Dial(apiclient.Config{Addr: b.Nodes[0].Addr, Token: a.Token, CAFile: controlplane.CAFile(a.Nodes[0].Dir)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = cl.Operator.Status(ctx, &apipb.StatusRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("status against another site: %v, want a certificate failure", err)
	}
}

func TestTokenAuthorization(t *testing.T) {
	clock := &controlplanetest.Clock{}
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Clock: clock})
	mgmt := c.Client(0)
	ctx := controlplanetest.Ctx(t)
	mk := func(kind apipb.TokenKind, ttl time.Duration) (*apipb.CreateTokenResponse, *apiclient.Client) {
		req := &apipb.CreateTokenRequest{Kind: kind}
		if ttl > 0 {
			req.Ttl = durationpb.New(ttl)
		}
		resp, err := mgmt.ACL.CreateToken(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return resp, c.ClientWithToken(0, resp.Secret)
	}
	_, read := mk(apipb.TokenKind_TOKEN_KIND_READ, 0)
	writeTok, write := mk(apipb.TokenKind_TOKEN_KIND_WRITE, 0)
	_, shortLived := mk(apipb.TokenKind_TOKEN_KIND_READ, time.Minute)
	none := c.ClientWithToken(0, "")
	bogus := c.ClientWithToken(0, "strait_not-a-real-token")
	reg := &apipb.RegisterRequest{Service: &apipb.Service{Name: "api"}}

	check := func(name string, err error, want codes.Code) {
		t.Helper()
		if got := status.Code(err); got != want {
			t.Errorf("%s: %v, want %s", name, err, want)
		}
	}
	_, err := read.Catalog.ListServices(ctx, &apipb.ListServicesRequest{})
	check("read token lists", err, codes.OK)
	_, err = read.Catalog.Register(ctx, reg)
	check("read token registers", err, codes.PermissionDenied)
	_, err = write.Catalog.Register(ctx, reg)
	check("write token registers", err, codes.OK)
	_, err = write.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_MANAGEMENT})
	check("write token creates tokens", err, codes.PermissionDenied)
	_, err = none.Catalog.ListServices(ctx, &apipb.ListServicesRequest{})
	check("no token", err, codes.Unauthenticated)
	_, err = bogus.Catalog.ListServices(ctx, &apipb.ListServicesRequest{})
	check("unknown token", err, codes.Unauthenticated)

	_, err = mgmt.ACL.RevokeToken(ctx, &apipb.RevokeTokenRequest{AccessorId: writeTok.Token.AccessorId})
	check("revoke", err, codes.OK)
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		_, err := write.Catalog.ListServices(ctx, &apipb.ListServicesRequest{})
		if status.Code(err) != codes.Unauthenticated {
			return errors.New("revoked token still accepted")
		}
		return nil
	})

	_, err = shortLived.Catalog.ListServices(ctx, &apipb.ListServicesRequest{})
	check("short-lived token before expiry", err, codes.OK)
	clock.Advance(2 * time.Minute)
	_, err = shortLived.Catalog.ListServices(ctx, &apipb.ListServicesRequest{})
	check("short-lived token after expiry", err, codes.Unauthenticated)

	// Token listing never reveals secrets or hashes.
	list, err := mgmt.ACL.ListTokens(ctx, &apipb.ListTokensRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range list.Tokens {
		if strings.Contains(tok.String(), "strait_") {
			t.Fatalf("token listing leaks a secret: %v", tok)
		}
	}
}

// runJoin runs a server that tries to join with token and returns its error.
func runJoin(t *testing.T, c *controlplanetest.Cluster, id, token string) error {
	t.Helper()
	cfg, closeLn := c.NewServerConfig(id, token)
	defer closeLn()
	s, err := controlplane.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-s.Started():
		cancel()
		<-done
		return nil
	case <-time.After(30 * time.Second):
		t.Fatal("join neither failed nor started within 30s")
		return nil
	}
}

func TestJoinTokenRefusals(t *testing.T) {
	clock := &controlplanetest.Clock{}
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Clock: clock})
	other := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "other"})

	used := c.ServerToken()
	if err := runJoin(t, c, "s1", used); err != nil {
		t.Fatalf("first use of a server token: %v", err)
	}
	expiring := c.ServerToken()
	fromOther := other.ServerToken()
	good := c.ServerToken()
	secret, pin, _ := strings.Cut(good, ".")
	_, otherPin, _ := strings.Cut(fromOther, ".")
	forged := "strait_" + strings.Repeat("A", 43) + "." + pin

	if err := runJoin(t, c, "s2", used); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("second use of a server token: %v, want already used", err)
	}
	clock.Advance(2 * time.Hour) // past the default 1h server token TTL
	tests := []struct {
		name, token, want string
	}{
		{"expired", expiring, "expired"},
		{"forged secret", forged, "not a valid server join token"},
		{"truncated", good[:20], "malformed or truncated"},
		{"tampered pin", secret + "." + otherPin, "does not match the join token's pin"},
		{"token of another site", fromOther, "does not match the join token's pin"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runJoin(t, c, "j"+string(rune('a'+i)), tt.token)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("join: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
