package enroll_test

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

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
