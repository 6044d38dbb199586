package bundleendpoint

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// MaxBundleSize bounds a fetched bundle document.
const MaxBundleSize = 1 << 20

// FetchConfig says where a foreign bundle comes from and how to trust the
// endpoint serving it.
type FetchConfig struct {
	// URL of the endpoint; must be https.
	URL string
	// TrustDomain whose bundle is fetched.
	TrustDomain spiffeid.TrustDomain
	// EndpointID, for the https_spiffe profile: the endpoint must present
	// an SVID with this ID, verified against Trusted. Empty: https_web.
	EndpointID spiffeid.ID
	// Trusted is the trust domain's last known bundle (https_spiffe).
	Trusted *x509bundle.Bundle
	// WebRoots verify https_web endpoints; the system roots when nil.
	WebRoots *x509.CertPool
	// Timeout for the whole fetch; 10s when zero.
	Timeout time.Duration
}

// Fetch retrieves and checks a foreign bundle: https only (redirects
// included), status 200, a JSON content type, at most MaxBundleSize bytes,
// a well-formed SPIFFE bundle whose X.509 authorities are CA certificates
// of that trust domain.
func Fetch(ctx context.Context, cfg FetchConfig) (*spiffebundle.Bundle, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("bundle endpoint %q: want an https URL", cfg.URL)
	}
	var tlsConf *tls.Config
	if !cfg.EndpointID.IsZero() {
		if cfg.EndpointID.TrustDomain() != cfg.TrustDomain {
			return nil, fmt.Errorf("endpoint ID %s is not in trust domain %s", cfg.EndpointID, cfg.TrustDomain)
		}
		if cfg.Trusted == nil || cfg.Trusted.TrustDomain() != cfg.TrustDomain {
			return nil, fmt.Errorf("https_spiffe needs a bundle of %s to verify the endpoint", cfg.TrustDomain)
		}
		tlsConf = tlsconfig.TLSClientConfig(cfg.Trusted, tlsconfig.AuthorizeID(cfg.EndpointID))
	} else {
		tlsConf = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.WebRoots}
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	client := &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{TLSClientConfig: tlsConf, Proxy: http.ProxyFromEnvironment, ResponseHeaderTimeout: timeout},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return fmt.Errorf("refusing redirect to non-https %s", req.URL.Redacted())
			}
			if len(via) >= 3 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch bundle of %s: %w", cfg.TrustDomain, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch bundle of %s: status %s", cfg.TrustDomain, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || (mt != "application/json" && mt != "application/jwk-set+json") {
		return nil, fmt.Errorf("fetch bundle of %s: content type %q, want application/json", cfg.TrustDomain, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("fetch bundle of %s: %w", cfg.TrustDomain, err)
	}
	if len(body) > MaxBundleSize {
		return nil, fmt.Errorf("fetch bundle of %s: larger than %d bytes", cfg.TrustDomain, MaxBundleSize)
	}
	return Parse(cfg.TrustDomain, body)
}

// Parse reads a SPIFFE bundle document of td and checks it: at least one
// authority, X.509 authorities that are CA certificates naming td (when
// they name a trust domain at all).
func Parse(td spiffeid.TrustDomain, doc []byte) (*spiffebundle.Bundle, error) {
	if len(doc) > MaxBundleSize {
		return nil, fmt.Errorf("bundle of %s: larger than %d bytes", td, MaxBundleSize)
	}
	b, err := spiffebundle.Parse(td, doc)
	if err != nil {
		return nil, fmt.Errorf("bundle of %s: %w", td, err)
	}
	if len(b.X509Authorities()) == 0 && len(b.JWTAuthorities()) == 0 {
		return nil, fmt.Errorf("bundle of %s: no authorities", td)
	}
	for _, c := range b.X509Authorities() {
		if !c.IsCA {
			return nil, fmt.Errorf("bundle of %s: X.509 authority %q is not a CA certificate", td, c.Subject)
		}
		for _, u := range c.URIs {
			if id, err := spiffeid.FromURI(u); err == nil && id.TrustDomain() != td {
				return nil, fmt.Errorf("bundle of %s: X.509 authority belongs to trust domain %s", td, id.TrustDomain())
			}
		}
	}
	return b, nil
}
