// Package mtls builds TLS configurations that authenticate both ends by
// SPIFFE identity: the local X.509-SVID is presented, and the peer's chain
// is verified against the trust bundle of its trust domain (never a merged
// pool) and then authorized by its SPIFFE ID.
//
// An Identity may be swapped at any time (rotation); configurations read it
// on every handshake. Identity is safe for concurrent use.
package mtls

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Authorizer decides whether a verified peer may connect.
type Authorizer func(id spiffeid.ID) error

// Identity is a rotating SVID with the bundle used to verify peers.
type Identity struct {
	mu     sync.RWMutex
	cert   *tls.Certificate
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
	now    func() time.Time
	// federated, when set, provides the bundles of other trust domains
	// whose peers may be verified (each against its own bundle).
	federated x509bundle.Source
}

// SetFederated lets peers of other trust domains be verified against
// their own bundles from src. Authorization decides what they may do.
func (i *Identity) SetFederated(src x509bundle.Source) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.federated = src
}

// NewIdentity returns an identity with no SVID yet (a client that only
// verifies servers) and the given bundle. now defaults to time.Now.
func NewIdentity(bundle *x509bundle.Bundle, now func() time.Time) *Identity {
	if now == nil {
		now = time.Now
	}
	return &Identity{bundle: bundle, now: now}
}

// SetSVID installs a new SVID. chain is the leaf first; the bundle's
// authorities are appended to what is presented, so a peer holding only a
// pin of the CA can verify the chain.
func (i *Identity) SetSVID(chain []*x509.Certificate, key crypto.Signer) error {
	if len(chain) == 0 {
		return errors.New("set svid: empty chain")
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return fmt.Errorf("set svid: %w", err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, a := range i.bundle.X509Authorities() {
		tc.Certificate = append(tc.Certificate, a.Raw)
	}
	i.cert = tc
	i.svid = &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	return nil
}

// SetBundle replaces the bundle of the local trust domain (the CA set
// changed). The presented chain is rebuilt on the next SetSVID.
func (i *Identity) SetBundle(b *x509bundle.Bundle) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.bundle = b
}

// SVID returns the current SVID, or nil.
func (i *Identity) SVID() *x509svid.SVID {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.svid
}

// Bundle returns the current local bundle.
func (i *Identity) Bundle() *x509bundle.Bundle {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.bundle
}

// GetX509BundleForTrustDomain implements x509bundle.Source: the local
// trust domain's bundle, or a federated one when a source is set.
func (i *Identity) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	i.mu.RLock()
	b, fed := i.bundle, i.federated
	i.mu.RUnlock()
	if b.TrustDomain() == td {
		return b, nil
	}
	if fed != nil {
		return fed.GetX509BundleForTrustDomain(td)
	}
	return nil, fmt.Errorf("no bundle for trust domain %q", td)
}

func (i *Identity) certificate() (*tls.Certificate, error) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	if i.cert == nil {
		return nil, errors.New("no SVID yet")
	}
	return i.cert, nil
}

// verify checks raw peer certificates and returns the peer's ID.
func (i *Identity) verify(raw [][]byte, authorize Authorizer) (spiffeid.ID, error) {
	id, _, err := x509svid.ParseAndVerify(raw, i, x509svid.WithTime(i.now()))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("peer certificate: %w", err)
	}
	if authorize != nil {
		if err := authorize(id); err != nil {
			return spiffeid.ID{}, fmt.Errorf("peer %s not authorized: %w", id, err)
		}
	}
	return id, nil
}

// ProtoGRPC is the ALPN name of gRPC (HTTP/2) on Strait's TLS
// connections: the API port, the replication stream, the join handshake.
const ProtoGRPC = "h2"

// ClientAuth says what a server requires of clients.
type ClientAuth int

const (
	// RequireClientSVID refuses a client without a valid, authorized SVID.
	RequireClientSVID ClientAuth = iota
	// OptionalClientSVID accepts a client without a certificate (it
	// authenticates otherwise, with a token); one that presents a
	// certificate must present a valid, authorized SVID.
	OptionalClientSVID
)

// ServerConfig returns a TLS 1.3 server config presenting id's SVID.
func ServerConfig(id *Identity, auth ClientAuth, authorize Authorizer, nextProtos ...string) *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: nextProtos,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return id.certificate()
		},
		ClientAuth: tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 && auth == OptionalClientSVID {
				return nil
			}
			_, err := id.verify(raw, authorize)
			return err
		},
	}
	if auth == OptionalClientSVID {
		c.ClientAuth = tls.RequestClientCert
	}
	return c
}

// ClientConfig returns a TLS 1.3 client config that verifies the server's
// SVID and authorizes it, presenting id's SVID if it has one.
func ClientConfig(id *Identity, authorize Authorizer, nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: nextProtos,
		// Verification is by SPIFFE ID, below, not by host name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := id.certificate()
			if err != nil {
				return &tls.Certificate{}, nil // no SVID: present none
			}
			return c, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := id.verify(raw, authorize)
			return err
		},
	}
}

// PeerID returns the SPIFFE ID of a verified TLS peer.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, bool) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	return id, err == nil
}
