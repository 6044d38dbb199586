package ca_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/trust/ca"
)

var td = spiffeid.RequireTrustDomainFromString("dc1.strait")

func TestSignedSVIDFollowsTheSpec(t *testing.T) {
	now := time.Now()
	root, err := ca.Generate(td, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	csr, err := ca.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/ns/payments/svc/api")
	leaf, err := root.SignCSR(id, csr, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// go-spiffe's own verifier is the judge of the X509-SVID rules.
	got, _, err := x509svid.Verify([]*x509.Certificate{leaf}, x509bundle.FromX509Authorities(td, []*x509.Certificate{root.Certificate()}))
	if err != nil {
		t.Fatalf("go-spiffe rejects our SVID: %v", err)
	}
	if got != id {
		t.Fatalf("id %s, want %s", got, id)
	}
	if leaf.IsCA || leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Fatal("leaf can sign certificates")
	}
	if _, err := x509svid.ParseRaw(leaf.Raw, mustPKCS8(t, key)); err != nil {
		t.Fatalf("go-spiffe cannot parse the SVID with its key: %v", err)
	}
}

func mustPKCS8(t *testing.T, k any) []byte {
	b, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSignRefusals(t *testing.T) {
	now := time.Now()
	root, _ := ca.Generate(td, now, 24*time.Hour)
	key, _ := ca.NewKey()
	okCSR, _ := ca.NewCSR(key)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaCSR, _ := ca.NewCSR(rsaKey)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	edCSR, _ := ca.NewCSR(edKey)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p224CSR, _ := ca.NewCSR(p224)
	tampered := append([]byte(nil), okCSR...)
	tampered[len(tampered)-5] ^= 0xff

	tests := []struct {
		name string
		id   spiffeid.ID
		csr  []byte
	}{
		{"other trust domain", spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("evil.strait"), "/x"), okCSR},
		{"garbage csr", spiffeid.RequireFromPath(td, "/x"), []byte("garbage")},
		{"empty csr", spiffeid.RequireFromPath(td, "/x"), nil},
		{"bad self-signature", spiffeid.RequireFromPath(td, "/x"), tampered},
		{"rsa key", spiffeid.RequireFromPath(td, "/x"), rsaCSR},
		{"ed25519 key", spiffeid.RequireFromPath(td, "/x"), edCSR},
		{"weak curve", spiffeid.RequireFromPath(td, "/x"), p224CSR},
		{"oversized", spiffeid.RequireFromPath(td, "/x"), make([]byte, ca.MaxCSRSize+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := root.SignCSR(tt.id, tt.csr, now, time.Hour); err == nil {
				t.Fatal("signed")
			}
		})
	}
	// A leaf never outlives its CA.
	leaf, err := root.SignCSR(spiffeid.RequireFromPath(td, "/x"), okCSR, now, 1000*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.NotAfter.After(root.Certificate().NotAfter) {
		t.Fatalf("leaf expires %s after CA %s", leaf.NotAfter, root.Certificate().NotAfter)
	}
}

func TestLoadRoundTripAndMismatch(t *testing.T) {
	a, _ := ca.Generate(td, time.Now(), 0)
	b, _ := ca.Generate(td, time.Now(), 0)
	ka, _ := a.MarshalKey()
	kb, _ := b.MarshalKey()
	if _, err := ca.Load(a.Certificate().Raw, ka); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Load(a.Certificate().Raw, kb); err == nil {
		t.Fatal("loaded a CA with another CA's key")
	}
}

func FuzzParseCSR(f *testing.F) {
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	f.Add(csr)
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := ca.ParseCSR(b); err == nil {
			if err := c.CheckSignature(); err != nil {
				t.Fatal("accepted a CSR with a bad signature")
			}
		}
	})
}

// BenchmarkSign compares SVID signing with the two candidate key types.
func BenchmarkSign(b *testing.B) {
	now := time.Now()
	id := spiffeid.RequireFromPath(td, "/ns/default/svc/api")
	b.Run("ecdsa-p256", func(b *testing.B) {
		root, _ := ca.Generate(td, now, 0)
		key, _ := ca.NewKey()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := root.SignX509SVID(id, key.Public(), now, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSignCSR is the server's work per SVID: parse and check the CSR,
// sign the leaf. Run on one pinned core for signatures/s per core.
func BenchmarkSignCSR(b *testing.B) {
	now := time.Now()
	root, _ := ca.Generate(td, now, 0)
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	id := spiffeid.RequireFromPath(td, "/ns/default/svc/api")
	for b.Loop() {
		if _, err := root.SignCSR(id, csr, now, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signatures/s")
}
