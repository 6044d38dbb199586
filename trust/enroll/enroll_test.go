package enroll_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/enroll"
	"github.com/straitmesh/strait/trust/svidfile"
)

// TestLoad: what enrollment kept comes back; another node's data dir and
// an empty one are told apart.
func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := enroll.Load(dir, "gw.json", "name", "gw-1"); !errors.Is(err, enroll.ErrNotEnrolled) {
		t.Fatalf("empty data dir: %v", err)
	}
	td := spiffeid.RequireTrustDomainFromString("site.strait")
	root, err := ca.Generate(td, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	cert, err := root.SignCSR(spiffeid.RequireFromString("spiffe://site.strait/strait/gateway/gw-1"), csr, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := svidfile.Write(filepath.Join(dir, "tls"), []*x509.Certificate{cert}, key, []*x509.Certificate{root.Certificate()}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gw.json"), []byte(`{"name":"gw-1","trust_domain":"site.strait"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	id, err := enroll.Load(dir, "gw.json", "name", "gw-1")
	if err != nil || id.TrustDomain != td || !id.Chain[0].Equal(cert) || len(id.Bundle) != 1 {
		t.Fatalf("loaded %+v, %v", id, err)
	}
	if _, err := enroll.Load(dir, "gw.json", "name", "gw-2"); err == nil || !strings.Contains(err.Error(), `belongs to "gw-1"`) {
		t.Fatalf("another node's data dir: %v", err)
	}
}

// TestLoadOrEnrollSaysWhatItIgnores: a join token given to a node that
// already holds an identity is not used, and the log says so; a node whose
// identity was set aside as revoked says so when started without a token.
func TestLoadOrEnrollSaysWhatItIgnores(t *testing.T) {
	dir := t.TempDir()
	td := spiffeid.RequireTrustDomainFromString("site.strait")
	root, err := ca.Generate(td, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	cert, err := root.SignCSR(spiffeid.RequireFromString("spiffe://site.strait/strait/agent/a1"), csr, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := svidfile.Write(filepath.Join(dir, "tls"), []*x509.Certificate{cert}, key, []*x509.Certificate{root.Certificate()}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "agent.json"), []byte(`{"node":"a1","trust_domain":"site.strait"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	n := enroll.Node{Kind: "agent", Dir: dir, InfoFile: "agent.json", NameKey: "node", Name: "a1", Token: "strait_x.y",
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if _, _, joined, err := enroll.LoadOrEnroll(context.Background(), n); err != nil || joined {
		t.Fatalf("load: joined %v, %v", joined, err)
	}
	if !strings.Contains(logs.String(), "join token ignored") || !strings.Contains(logs.String(), dir) {
		t.Fatalf("no word of the unused token in the log: %q", logs.String())
	}

	if err := enroll.MarkRevoked(dir, "agent.json"); err != nil {
		t.Fatal(err)
	}
	n.Token = ""
	if _, _, _, err := enroll.LoadOrEnroll(context.Background(), n); err == nil || !strings.Contains(err.Error(), "was revoked") {
		t.Fatalf("revoked, no token: %v", err)
	}
}

// TestIsRevoked tells the servers' revocation refusal from other denials.
func TestIsRevoked(t *testing.T) {
	if err := enroll.RevokedStatus("agent", "a1"); !enroll.IsRevoked(err) || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("RevokedStatus: %v", err)
	}
	for _, err := range []error{nil, errors.New("revoked"), status.Error(codes.PermissionDenied, `agent "a1" was revoked`), status.Error(codes.Unavailable, "down")} {
		if enroll.IsRevoked(err) {
			t.Errorf("IsRevoked(%v) = true", err)
		}
	}
}

// TestRevocationWatch: a revocation is acted on only once the servers
// have kept answering it for ConfirmRevokedAfter with no success between
// (a server that has not applied a re-join yet answers it for a moment).
func TestRevocationWatch(t *testing.T) {
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	w := enroll.RevocationWatch{Now: func() time.Time { return now }}
	revoked := enroll.RevokedStatus("gateway", "gw")
	if w.Confirmed(revoked) {
		t.Fatal("confirmed at the first answer")
	}
	now = now.Add(enroll.ConfirmRevokedAfter / 2)
	if w.Confirmed(errors.New("unavailable")) || w.Confirmed(revoked) {
		t.Fatal("confirmed too early")
	}
	now = now.Add(enroll.ConfirmRevokedAfter / 2)
	if !w.Confirmed(revoked) {
		t.Fatal("not confirmed after ConfirmRevokedAfter")
	}
	// A success in between starts over.
	w.Confirmed(nil)
	if w.Confirmed(revoked) {
		t.Fatal("confirmed right after a success")
	}
}
