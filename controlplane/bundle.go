package controlplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/bundleendpoint"
	"github.com/straitmesh/strait/trust/ca"
)

var _ spiffebundle.Source = (*Server)(nil)

// GetBundleForTrustDomain implements spiffebundle.Source for the site's
// own trust domain: its X.509 authorities, sequence and refresh hint.
func (s *Server) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != s.id.td {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	site := s.store.Site()
	auth, err := s.Authorities()
	if err != nil || site == nil {
		return nil, fmt.Errorf("site not bootstrapped yet")
	}
	b := spiffebundle.FromX509Authorities(td, auth)
	jwtAuth, err := s.JWTAuthorities()
	if err != nil {
		return nil, err
	}
	b.SetJWTAuthorities(jwtAuth)
	b.SetRefreshHint(s.cfg.BundleRefreshHint)
	b.SetSequenceNumber(site.BundleSequence)
	return b, nil
}

// OwnBundle implements api.Node.
func (s *Server) OwnBundle() (*spiffebundle.Bundle, error) {
	return s.GetBundleForTrustDomain(s.id.td)
}

// ownBundleDoc is the site's bundle document and sequence.
func (s *Server) ownBundleDoc() ([]byte, uint64, error) {
	b, err := s.OwnBundle()
	if err != nil {
		return nil, 0, err
	}
	doc, err := b.Marshal()
	if err != nil {
		return nil, 0, err
	}
	seq, _ := b.SequenceNumber()
	return doc, seq, nil
}

// endpointCert is the certificate the bundle endpoint presents: the
// operator's Web PKI certificate (https_web), or an SVID for
// spiffe://<td>/strait/bundle-endpoint issued from the site CA and
// re-issued at half-life (https_spiffe).
type endpointCert struct {
	s    *Server
	web  *tls.Certificate
	mu   sync.Mutex
	svid *tls.Certificate
}

func (e *endpointCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if e.web != nil {
		return e.web, nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.s.cfg.Now()
	root, err := e.s.siteCA()
	if err != nil {
		return nil, err
	}
	if e.svid != nil && now.Before(ca.RenewAt(e.svid.Leaf)) && ca.IssuedBy(e.svid.Leaf, root.Certificate()) {
		return e.svid, nil
	}
	key, err := ca.NewKey()
	if err != nil {
		return nil, err
	}
	leaf, err := root.SignX509SVID(trust.BundleEndpointID(e.s.id.td), key.Public(), now, e.s.cfg.ServerSVIDTTL)
	if err != nil {
		return nil, err
	}
	e.svid = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	return e.svid, nil
}

// serveBundle runs the bundle endpoint.
func (s *Server) serveBundle(ctx context.Context) error {
	ln := s.cfg.BundleListener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.BundleAddr); err != nil {
			return fmt.Errorf("bundle_endpoint_addr: %w", err)
		}
	}
	ec := &endpointCert{s: s}
	if s.cfg.BundleWebCertFile != "" {
		c, err := tls.LoadX509KeyPair(s.cfg.BundleWebCertFile, s.cfg.BundleWebKeyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("bundle_web_cert_file: %w", err)
		}
		ec.web = &c
	}
	ep, err := bundleendpoint.New(bundleendpoint.Config{Listener: ln, TrustDomain: s.id.td, Source: s, GetCertificate: ec.get, Logger: s.log, AcceptMetrics: s.accepts})
	if err != nil {
		ln.Close()
		return err
	}
	s.log.Info("bundle endpoint serving", "addr", ln.Addr().String(), "profile", map[bool]string{true: "https_web", false: "https_spiffe"}[ec.web != nil])
	return ep.Run(ctx)
}
