package controlplane_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/ca"
)

func TestBundleEndpointHTTPSSPIFFE(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{BundleEndpoint: true})
	n := c.Nodes[0]
	td := n.Server.TrustDomain()
	url := "https://" + n.BundleAddr + "/"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b interface {
		X509Authorities() []*x509.Certificate
		JWTAuthorities() map[string]crypto.PublicKey
		SequenceNumber() (uint64, bool)
		RefreshHint() (time.Duration, bool)
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		got, err := federation.FetchBundle(ctx, td, url, federation.WithSPIFFEAuth(n.Server.Bundle(), trust.BundleEndpointID(td)))
		if err != nil {
			return err
		}
		if len(got.JWTAuthorities()) != 1 {
			return fmt.Errorf("bundle has %d JWT authorities, want 1", len(got.JWTAuthorities()))
		}
		b = got
		return nil
	})
	auth := b.X509Authorities()
	if len(auth) != 1 || !auth[0].Equal(n.Server.Bundle().X509Authorities()[0]) {
		t.Fatalf("bundle authorities %v, want the site CA", auth)
	}
	if seq, ok := b.SequenceNumber(); !ok || seq == 0 {
		t.Fatalf("spiffe_sequence %d %v, want a positive sequence", seq, ok)
	}
	if h, ok := b.RefreshHint(); !ok || h != 5*time.Minute {
		t.Fatalf("spiffe_refresh_hint %s %v, want 5m", h, ok)
	}
	// A client expecting another endpoint identity refuses the endpoint.
	wrong := spiffeid.RequireFromSegments(td, "strait", "server", "s0")
	if _, err := federation.FetchBundle(ctx, td, url, federation.WithSPIFFEAuth(n.Server.Bundle(), wrong)); err == nil {
		t.Fatal("fetch succeeded while expecting another endpoint SPIFFE ID")
	}
}

// webPKI writes a CA and a server certificate for 127.0.0.1, as an
// operator's Web PKI certificate would be.
func webPKI(t *testing.T) (pool *x509.CertPool, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ca.NewKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test web ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ca.NewKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "web.pem"), filepath.Join(dir, "web.key")
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	return pool, certFile, keyFile
}

func TestBundleEndpointHTTPSWeb(t *testing.T) {
	pool, cert, key := webPKI(t)
	c := controlplanetest.Start(t, 1, controlplanetest.Options{BundleEndpoint: true, BundleWebCertFile: cert, BundleWebKeyFile: key})
	n := c.Nodes[0]
	td := n.Server.TrustDomain()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		b, err := federation.FetchBundle(ctx, td, "https://"+n.BundleAddr+"/", federation.WithWebPKIRoots(pool))
		if err != nil {
			return err
		}
		if len(b.X509Authorities()) != 1 {
			t.Fatalf("authorities %d", len(b.X509Authorities()))
		}
		return nil
	})
}
