package controlplane

import (
	"context"
	"crypto/x509"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/trust/ca"
)

// The site CA's signing for the API (api.Signer). FOR THE LEAD: these
// three belong to the site authority and move with it (trust/authority).

var _ api.Signer = (*Server)(nil)

// SignSVID issues an X.509-SVID for id over the key in a PKCS#10 CSR.
// Every server holds the KEK, so any server signs; the rate limit keeps
// a mass rotation from starving the rest (api.ErrOverloaded when ctx
// ends first).
func (s *Server) SignSVID(ctx context.Context, id spiffeid.ID, csr []byte, ttl time.Duration) (*x509.Certificate, error) {
	if _, err := ca.ParseCSR(csr); err != nil {
		return nil, &api.FieldError{Field: "csr", Rule: err.Error()}
	}
	if err := s.signLimit.Wait(ctx); err != nil {
		return nil, api.Overloaded("signing rate limit (%v/s): %v", s.signLimit.Limit(), err)
	}
	root, err := s.siteCA()
	if err != nil {
		return nil, err
	}
	cert, err := root.SignCSR(id, csr, s.cfg.Now(), ttl)
	if err != nil {
		return nil, err
	}
	s.metrics.signed.Inc()
	return cert, nil
}

// Authorities are the site's trusted roots, the active (signing) one
// first.
func (s *Server) Authorities() ([]*x509.Certificate, error) {
	site := s.store.Site()
	if site == nil {
		return nil, state.ErrNotBootstrapped
	}
	return authorities(site)
}

// WorkloadSVIDTTL is the default lifetime of workload SVIDs.
func (s *Server) WorkloadSVIDTTL() time.Duration { return s.cfg.WorkloadSVIDTTL }
