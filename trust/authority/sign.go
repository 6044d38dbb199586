package authority

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust/ca"
)

// SignSVID issues an X.509-SVID for id over the key in a PKCS#10 CSR,
// valid for ttl. Every server holds the KEK, so any server signs; the
// signing rate limit (waited for within ctx) keeps a mass rotation from
// starving the rest. When the wait cannot fit in ctx the error is
// ErrSignRateLimited.
func (a *Authority) SignSVID(ctx context.Context, id spiffeid.ID, csr []byte, ttl time.Duration) (*x509.Certificate, error) {
	if _, err := ca.ParseCSR(csr); err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := a.signLimit.Wait(ctx); err != nil {
		return nil, rateLimited(fmt.Sprintf("signing rate limit (%v/s): %v", a.signLimit.Limit(), err))
	}
	root, err := a.CA()
	if err != nil {
		return nil, err
	}
	cert, err := root.SignCSR(id, csr, a.cfg.Now(), ttl)
	if err != nil {
		return nil, err
	}
	a.signed.Inc()
	return cert, nil
}

// JWT-SVIDs are signed with ES256 by the site's newest JWT key. Keys live
// in the replicated state sealed under the KEK (context "<td>/jwt"), like
// the CA key; their public halves are published in the bundle.

func (a *Authority) jwtContext() []byte { return []byte(a.cfg.TrustDomain.Name() + "/jwt") }

// ensureJWTKey commits a signing key when the site has none. Leader only.
func (a *Authority) ensureJWTKey(ctx context.Context) error {
	site := a.cfg.Store.Site()
	if site == nil || len(site.JwtKeys) > 0 {
		return nil
	}
	key, err := ca.NewKey()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	priv, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	sealed, err := a.cfg.KEK.Seal(priv, a.jwtContext())
	if err != nil {
		return err
	}
	kid := make([]byte, 16)
	if _, err := rand.Read(kid); err != nil {
		return err
	}
	cmd := &statepb.Command{Cmd: &statepb.Command_AddJwtKey{AddJwtKey: &statepb.JWTKey{
		Kid: base64.RawURLEncoding.EncodeToString(kid), PublicKey: pub, SealedKey: sealed,
	}}}
	if _, _, err := a.cfg.Consensus.Apply(ctx, cmd); err != nil {
		return fmt.Errorf("commit jwt key: %w", err)
	}
	a.log.Info("jwt signing key created")
	return nil
}

// JWTAuthorities are the site's JWT public keys by key ID.
func (a *Authority) JWTAuthorities() (map[string]crypto.PublicKey, error) {
	site := a.cfg.Store.Site()
	if site == nil {
		return nil, ErrNotBootstrapped
	}
	out := make(map[string]crypto.PublicKey, len(site.JwtKeys))
	for _, k := range site.JwtKeys {
		pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("jwt key %s: %w", k.Kid, err)
		}
		out[k.Kid] = pub
	}
	return out, nil
}

type jwtCache struct {
	kid    string
	sealed []byte
	signer jose.Signer
}

// jwtSigner returns a signer for the newest key, opening it once.
func (a *Authority) jwtSigner() (jose.Signer, error) {
	site := a.cfg.Store.Site()
	if site == nil || len(site.JwtKeys) == 0 {
		return nil, fmt.Errorf("no jwt signing key yet: %w", ErrNotBootstrapped)
	}
	k := site.JwtKeys[len(site.JwtKeys)-1]
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := a.jwt; c != nil && c.kid == k.Kid && bytes.Equal(c.sealed, k.SealedKey) {
		return c.signer, nil
	}
	der, err := a.cfg.KEK.Open(k.SealedKey, a.jwtContext())
	if err != nil {
		return nil, fmt.Errorf("open jwt key: %w", err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: priv, KeyID: k.Kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	a.jwt = &jwtCache{kid: k.Kid, sealed: k.SealedKey, signer: signer}
	return signer, nil
}

// SignJWT issues a JWT-SVID for id and audience, valid for ttl, after
// waiting for the signing rate limit within ctx.
func (a *Authority) SignJWT(ctx context.Context, id spiffeid.ID, audience []string, ttl time.Duration) (string, error) {
	if err := a.signLimit.Wait(ctx); err != nil {
		return "", err
	}
	signer, err := a.jwtSigner()
	if err != nil {
		return "", err
	}
	now := a.cfg.Now()
	claims := jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(audience),
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

// ErrSignRateLimited is what SignSVID returns (errors.Is) when the
// signing rate limit could not be waited for within the caller's context.
// The API answers it with ResourceExhausted.
var ErrSignRateLimited = errors.New("signing rate limit reached")

// rateLimited is an ErrSignRateLimited with its own message.
type rateLimited string

func (e rateLimited) Error() string        { return string(e) }
func (e rateLimited) Is(target error) bool { return target == ErrSignRateLimited }
