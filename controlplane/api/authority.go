package api

import (
	"context"
	"crypto"
	"crypto/x509"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/trust/ca"
)

// Authority is what the identity, gateway, token and CA handlers need from
// the site authority (trust/authority).
type Authority interface {
	// TokenPin is the suffix server and agent tokens carry to pin the site CA.
	TokenPin() string
	// SignSVID issues an X.509-SVID for id over the key in a PKCS#10 CSR,
	// waiting for the signing rate limit (ctx bounds the wait).
	SignSVID(ctx context.Context, id spiffeid.ID, csr []byte, ttl time.Duration) (*x509.Certificate, error)
	// Authorities are the site's X.509 CA certificates, the active first.
	Authorities() ([]*x509.Certificate, error)
	// WorkloadSVIDTTL is the default lifetime of workload SVIDs.
	WorkloadSVIDTTL() time.Duration
	// SignJWT issues a JWT-SVID for id and audience, valid for ttl.
	SignJWT(ctx context.Context, id spiffeid.ID, audience []string, ttl time.Duration) (string, error)
	// JWTAuthorities are the site's JWT public keys by key ID.
	JWTAuthorities() (map[string]crypto.PublicKey, error)
	// RotateCA prepares a new CA root (leader only).
	RotateCA(ctx context.Context) (*apipb.CARootStatus, error)
	// CAStatus lists the site's roots and their phases.
	CAStatus() (*apipb.CAStatusResponse, error)
}

// signSVID signs through the authority once the CSR parses: a malformed
// CSR is the caller's mistake (InvalidArgument on field csr).
func (s *Server) signSVID(ctx context.Context, id spiffeid.ID, csr []byte, ttl time.Duration) (*x509.Certificate, error) {
	if _, err := ca.ParseCSR(csr); err != nil {
		return nil, &FieldError{Field: "csr", Rule: err.Error()}
	}
	return s.cfg.Authority.SignSVID(ctx, id, csr, ttl)
}
