package authority

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/ca"
)

// renewTick is how often a server checks whether its own SVID is due.
const renewTick = time.Minute

// renewSVID re-issues this server's SVID from the site CA when it is past
// half its lifetime or another root signs. It runs on every server (each
// holds the KEK).
func (a *Authority) renewSVID() error {
	ident := a.cfg.Identity
	cur := ident.SVID()
	leaf := cur.Certificates[0]
	now := a.cfg.Now()
	root, err := a.CA()
	if err != nil {
		return err
	}
	if !ca.NeedsRenewal(leaf, root.Certificate(), now) {
		return nil
	}
	key, err := ca.NewKey()
	if err != nil {
		return err
	}
	cert, err := root.SignX509SVID(cur.ID, key.Public(), now, a.cfg.ServerSVIDTTL)
	if err != nil {
		return err
	}
	chain := []*x509.Certificate{cert}
	if a.cfg.Persist != nil {
		if err := a.cfg.Persist(chain, key, ident.Bundle().X509Authorities()); err != nil {
			return err
		}
	}
	a.log.Info("server svid renewed", "id", cur.ID.String(), "expires", cert.NotAfter)
	return ident.SetSVID(chain, key)
}

// renewLoop keeps the server's own SVID fresh.
func (a *Authority) renewLoop(ctx context.Context) error {
	t := time.NewTicker(renewTick)
	defer t.Stop()
	for {
		if err := a.renewSVID(); err != nil && !errors.Is(err, ErrNotBootstrapped) {
			a.log.Warn("server svid renewal failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// followIdentity keeps this server's trust bundle and SVID in step with
// the site's roots: new roots are trusted as soon as they are prepared,
// and the SVID is re-issued as soon as another root signs.
func (a *Authority) followIdentity(ctx context.Context) error {
	var seq uint64
	for {
		changed := a.cfg.Store.IdentityChanged()
		if site := a.cfg.Store.Site(); site != nil && site.BundleSequence != seq {
			if err := a.syncBundle(site); err != nil {
				a.log.Warn("trust bundle update failed", "err", err)
			} else {
				seq = site.BundleSequence
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func (a *Authority) syncBundle(site *statepb.Bootstrap) error {
	auth, err := authorities(site)
	if err != nil {
		return err
	}
	ident := a.cfg.Identity
	cur := ident.Bundle().X509Authorities()
	if !sameCerts(cur, auth) {
		ident.SetBundle(x509bundle.FromX509Authorities(a.cfg.TrustDomain, auth))
		sv := ident.SVID()
		if err := ident.SetSVID(sv.Certificates, sv.PrivateKey); err != nil { // re-present with the new roots
			return err
		}
		if a.cfg.Persist != nil {
			if err := a.cfg.Persist(sv.Certificates, sv.PrivateKey, auth); err != nil {
				return err
			}
		}
	}
	return a.renewSVID()
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Raw, b[i].Raw) {
			return false
		}
	}
	return true
}

var _ spiffebundle.Source = (*Authority)(nil)

// GetBundleForTrustDomain implements spiffebundle.Source for the site's
// own trust domain: its X.509 authorities, JWT authorities, sequence and
// refresh hint.
func (a *Authority) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != a.cfg.TrustDomain {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	site := a.cfg.Store.Site()
	auth, err := a.Authorities()
	if err != nil || site == nil {
		return nil, fmt.Errorf("site not bootstrapped yet")
	}
	b := spiffebundle.FromX509Authorities(td, auth)
	jwtAuth, err := a.JWTAuthorities()
	if err != nil {
		return nil, err
	}
	b.SetJWTAuthorities(jwtAuth)
	b.SetRefreshHint(a.cfg.BundleRefreshHint)
	b.SetSequenceNumber(site.BundleSequence)
	return b, nil
}

// endpointCert is the SVID the SPIFFE bundle endpoint presents under the
// https_spiffe profile: spiffe://<td>/strait/bundle-endpoint, issued from
// the site CA and re-issued at half-life or when another root signs.
type endpointCert struct {
	mu   sync.Mutex
	svid *tls.Certificate
}

// BundleEndpointCertificate is a tls.Config.GetCertificate for the
// bundle endpoint's https_spiffe profile.
func (a *Authority) BundleEndpointCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	e := &a.endpoint
	e.mu.Lock()
	defer e.mu.Unlock()
	now := a.cfg.Now()
	root, err := a.CA()
	if err != nil {
		return nil, err
	}
	if e.svid != nil && !ca.NeedsRenewal(e.svid.Leaf, root.Certificate(), now) {
		return e.svid, nil
	}
	key, err := ca.NewKey()
	if err != nil {
		return nil, err
	}
	leaf, err := root.SignX509SVID(trust.BundleEndpointID(a.cfg.TrustDomain), key.Public(), now, a.cfg.ServerSVIDTTL)
	if err != nil {
		return nil, err
	}
	e.svid = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	return e.svid, nil
}
