// Package token is the federation token: an invitation from one site to
// another, carrying the issuing site's name and trust domain, its trust
// bundle (the pin that bootstraps trust), its bundle endpoint, addresses to
// reach it, a single-use secret and an expiry, signed by the issuing site's
// CA.
//
// Wire form: "strait-fed1." + base64url(SignedInvite). The signature is
// checked against the X.509 authorities of the bundle inside the token, so a
// token cannot be altered without the CA key; that the bundle is the right
// site's is what the operator vouches for by passing the token on.
//
// Stateless; safe to import from anywhere.
package token

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/trust/bundleendpoint"
)

// Prefix starts every federation token.
const Prefix = "strait-fed1."

// MaxSize bounds a token (it carries a bundle).
const MaxSize = 64 << 10

// Errors of Decode, each with a message fit for the operator.
var (
	ErrMalformed = errors.New("federation token is malformed or truncated: copy the whole output of `strait federation token`")
	ErrSignature = errors.New("federation token signature does not verify: it was altered, or not issued by the site it names")
	ErrExpired   = errors.New("federation token has expired: ask the other site for a new one")
)

// Encode signs invite with the issuing CA's key.
func Encode(invite *apipb.FederationInvite, key crypto.Signer) (string, error) {
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(invite)
	if err != nil {
		return "", err
	}
	digest := sha256.Sum256(payload)
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("sign federation token: %w", err)
	}
	wire, err := proto.Marshal(&apipb.SignedInvite{Invite: payload, Signature: sig})
	if err != nil {
		return "", err
	}
	return Prefix + base64.RawURLEncoding.EncodeToString(wire), nil
}

// Decode parses and verifies a token at now. It returns the invite and the
// issuer's bundle.
func Decode(s string, now time.Time) (*apipb.FederationInvite, *spiffebundle.Bundle, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxSize || !strings.HasPrefix(s, Prefix) {
		return nil, nil, ErrMalformed
	}
	wire, err := base64.RawURLEncoding.DecodeString(s[len(Prefix):])
	if err != nil {
		return nil, nil, ErrMalformed
	}
	var signed apipb.SignedInvite
	if err := proto.Unmarshal(wire, &signed); err != nil || len(signed.Invite) == 0 || len(signed.Signature) == 0 {
		return nil, nil, ErrMalformed
	}
	var inv apipb.FederationInvite
	if err := proto.Unmarshal(signed.Invite, &inv); err != nil || inv.Version != 1 {
		return nil, nil, ErrMalformed
	}
	td, err := spiffeid.TrustDomainFromString(inv.TrustDomain)
	if err != nil || inv.Secret == "" || inv.Expires == nil || len(inv.Addresses) == 0 || len(inv.Addresses) > 16 || len(inv.Gateways) > 16 {
		return nil, nil, ErrMalformed
	}
	for _, a := range append(slices.Clone(inv.Addresses), inv.Gateways...) {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return nil, nil, fmt.Errorf("%w (address %q)", ErrMalformed, a)
		}
	}
	bundle, err := bundleendpoint.Parse(td, inv.Bundle)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (%v)", ErrMalformed, err)
	}
	digest := sha256.Sum256(signed.Invite)
	verified := false
	for _, c := range bundle.X509Authorities() {
		if pub, ok := c.PublicKey.(*ecdsa.PublicKey); ok && ecdsa.VerifyASN1(pub, digest[:], signed.Signature) {
			verified = true
			break
		}
	}
	if !verified {
		return nil, nil, ErrSignature
	}
	if !now.Before(inv.Expires.AsTime()) {
		return nil, nil, ErrExpired
	}
	return &inv, bundle, nil
}
