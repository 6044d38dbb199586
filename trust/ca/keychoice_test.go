package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"
)

// BenchmarkKeyChoice measures the two key types considered for the site CA
// and SVIDs: signing a leaf, and a full mutual TLS 1.3 handshake. The
// figures and the decision are in BENCHMARKS.md.
func BenchmarkKeyChoice(b *testing.B) {
	kinds := []struct {
		name string
		gen  func() crypto.Signer
	}{
		{"ecdsa-p256", func() crypto.Signer { k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader); return k }},
		{"ed25519", func() crypto.Signer { _, k, _ := ed25519.GenerateKey(rand.Reader); return k }},
	}
	for _, k := range kinds {
		caKey := k.gen()
		caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			URIs: []*url.URL{{Scheme: "spiffe", Host: "dc1.strait"}}}
		caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
		caCert, _ := x509.ParseCertificate(caDER)
		leaf := func() tls.Certificate {
			lk := k.gen()
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: caTmpl.NotBefore, NotAfter: caTmpl.NotAfter,
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				URIs: []*url.URL{{Scheme: "spiffe", Host: "dc1.strait", Path: "/ns/default/svc/api"}}}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, lk.Public(), caKey)
			if err != nil {
				b.Fatal(err)
			}
			return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: lk}
		}
		b.Run("sign/"+k.name, func(b *testing.B) {
			lk := k.gen()
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(3), NotBefore: caTmpl.NotBefore, NotAfter: caTmpl.NotAfter,
				URIs: []*url.URL{{Scheme: "spiffe", Host: "dc1.strait", Path: "/x"}}}
			for b.Loop() {
				if _, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, lk.Public(), caKey); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("mtls-handshake/"+k.name, func(b *testing.B) {
			pool := x509.NewCertPool()
			pool.AddCert(caCert)
			sc, cc := leaf(), leaf()
			srv := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{sc}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
			cli := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cc}, RootCAs: pool, ServerName: "x", InsecureSkipVerify: true,
				VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
					c, err := x509.ParseCertificate(raw[0])
					if err != nil {
						return err
					}
					_, err = c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
					return err
				}}
			for b.Loop() {
				c1, c2 := net.Pipe()
				done := make(chan error, 1)
				go func() { done <- tls.Server(c2, srv).Handshake() }()
				if err := tls.Client(c1, cli).Handshake(); err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				c1.Close()
				c2.Close()
			}
		})
	}
}
