// Package ca is a site's certificate authority: it creates the self-signed
// root of a trust domain and signs X.509-SVIDs under it, following the
// SPIFFE X509-SVID specification (one URI SAN, leaf without CA flag,
// digitalSignature key usage, both TLS extended key usages).
//
// A CA is safe for concurrent use. It never logs or exports its key except
// through MarshalKey, whose output callers must seal (trust/keywrap).
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults for certificate lifetimes.
const (
	DefaultRootTTL = 5 * 365 * 24 * time.Hour
	// Backdate covers clock skew between the CA and relying parties.
	Backdate = time.Minute
)

// CA signs SVIDs for one trust domain.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

// NewKey creates a key of the kind Strait uses for CAs and SVIDs: ECDSA
// P-256. BENCHMARKS.md has the measurement behind the choice.
func NewKey() (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// Generate creates a new self-signed root for td, valid from now for ttl
// (DefaultRootTTL when zero).
func Generate(td spiffeid.TrustDomain, now time.Time, ttl time.Duration) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("generate ca: empty trust domain")
	}
	if ttl == 0 {
		ttl = DefaultRootTTL
	}
	key, err := NewKey()
	if err != nil {
		return nil, fmt.Errorf("generate ca key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Strait"}, CommonName: td.Name() + " root"},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{td: td, cert: cert, key: key}, nil
}

// Load rebuilds a CA from its DER certificate and PKCS#8 key.
func Load(certDER, keyPKCS8 []byte) (*CA, error) {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	if !cert.IsCA || len(cert.URIs) != 1 {
		return nil, errors.New("parse ca certificate: not a SPIFFE CA (needs CA flag and one URI SAN)")
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(keyPKCS8)
	if err != nil {
		return nil, fmt.Errorf("parse ca key: %w", err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("parse ca key: not a signing key")
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, errors.New("parse ca key: key does not match certificate")
	}
	return &CA{td: id.TrustDomain(), cert: cert, key: key}, nil
}

// TrustDomain is the trust domain the CA signs for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Certificate is the CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// MarshalKey returns the CA key as PKCS#8. Seal it before storing it.
func (c *CA) MarshalKey() ([]byte, error) {
	return x509.MarshalPKCS8PrivateKey(c.key)
}

// SignX509SVID issues a leaf certificate for id over pub, valid from now for
// ttl, capped at the CA's own expiry.
func (c *CA) SignX509SVID(id spiffeid.ID, pub crypto.PublicKey, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	if id.TrustDomain() != c.td {
		return nil, fmt.Errorf("sign svid: %s is not in trust domain %s", id, c.td)
	}
	if ttl <= 0 {
		return nil, errors.New("sign svid: ttl must be positive")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Strait"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("sign svid: %w", err)
	}
	return x509.ParseCertificate(der)
}

// SignCSR verifies a PKCS#10 request's self-signature and issues an SVID
// for id over its key. The CSR's own names are ignored: the caller decides
// the identity.
func (c *CA) SignCSR(id spiffeid.ID, csrDER []byte, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	return c.SignX509SVID(id, csr.PublicKey, now, ttl)
}

// MaxCSRSize bounds the CSRs ParseCSR accepts.
const MaxCSRSize = 8 << 10

// ParseCSR parses a DER PKCS#10 request and checks its signature and key.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 || len(der) > MaxCSRSize {
		return nil, fmt.Errorf("parse csr: size %d outside 1..%d bytes", len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parse csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("parse csr: bad self-signature: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, errors.New("parse csr: ecdsa key must use P-256 or P-384")
		}
	default:
		return nil, fmt.Errorf("parse csr: unsupported key type %T (want ECDSA)", k)
	}
	return csr, nil
}

// NewCSR creates a CSR for key with no names; the CA assigns the identity.
func NewCSR(key crypto.Signer) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	h := crypto.SHA256.New()
	h.Write(der)
	return h.Sum(nil)[:20], nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// RenewAt is when a certificate should be replaced: half its lifetime.
func RenewAt(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2)
}

// NeedsRenewal is the one rule for "renew this SVID now?": yes once leaf
// is past half its lifetime (RenewAt), or when active, the root that
// signs now, did not issue it (a CA rotation activated a new root, or the
// leaf comes from a root the site dropped). A nil active means the
// signing root is not known yet: only the lifetime counts.
//
// Only the active root counts, not the newest root a bundle publishes: a
// root prepared in a rotation is trusted before it signs, and renewing
// for it would only bring another leaf from the same active root, on
// every check until the new root activates.
func NeedsRenewal(leaf, active *x509.Certificate, now time.Time) bool {
	return !now.Before(RenewAt(leaf)) || (active != nil && !IssuedBy(leaf, active))
}

// IssuedBy reports whether leaf names issuer's key as its authority key.
// It is a cheap check for "signed by the current root", not a signature
// verification.
func IssuedBy(leaf, issuer *x509.Certificate) bool {
	return len(leaf.AuthorityKeyId) > 0 && string(leaf.AuthorityKeyId) == string(issuer.SubjectKeyId)
}

// Signer is the CA's private key, for signing documents the site vouches
// for (federation tokens). Never log or export it.
func (c *CA) Signer() crypto.Signer { return c.key }
