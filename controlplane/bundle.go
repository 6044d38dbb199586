package controlplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/straitmesh/strait/trust/bundleendpoint"
)

// OwnBundle is the site's SPIFFE bundle (api.Bundles).
func (s *Server) OwnBundle() (*spiffebundle.Bundle, error) {
	return s.auth.GetBundleForTrustDomain(s.id.td)
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

// serveBundle runs the bundle endpoint. It presents the operator's Web PKI
// certificate (https_web), or an SVID for
// spiffe://<td>/strait/bundle-endpoint the authority issues (https_spiffe).
func (s *Server) serveBundle(ctx context.Context) error {
	ln := s.cfg.BundleListener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.BundleAddr); err != nil {
			return fmt.Errorf("bundle_endpoint_addr: %w", err)
		}
	}
	getCert, profile := s.auth.BundleEndpointCertificate, "https_spiffe"
	if s.cfg.BundleWebCertFile != "" {
		c, err := tls.LoadX509KeyPair(s.cfg.BundleWebCertFile, s.cfg.BundleWebKeyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("bundle_web_cert_file: %w", err)
		}
		getCert, profile = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &c, nil }, "https_web"
	}
	ep, err := bundleendpoint.New(bundleendpoint.Config{Listener: ln, TrustDomain: s.id.td, Source: s.auth, GetCertificate: getCert, Logger: s.log, AcceptMetrics: s.accepts})
	if err != nil {
		ln.Close()
		return err
	}
	s.log.Info("bundle endpoint serving", "addr", ln.Addr().String(), "profile", profile)
	return ep.Run(ctx)
}
