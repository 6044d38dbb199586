package controlplane

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust/ca"
)

// JWT-SVIDs are signed with ES256 by the site's newest JWT key. Keys live
// in the replicated state sealed under the KEK (context "<td>/jwt"), like
// the CA key; their public halves are published in the bundle.

func (s *Server) jwtContext() []byte { return []byte(s.id.td.Name() + "/jwt") }

// ensureJWTKey commits a signing key when the site has none. Leader only.
func (s *Server) ensureJWTKey(ctx context.Context) error {
	site := s.store.Site()
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
	sealed, err := s.id.kek.Seal(priv, s.jwtContext())
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
	if _, _, err := s.Apply(ctx, cmd); err != nil {
		return fmt.Errorf("commit jwt key: %w", err)
	}
	s.log.Info("jwt signing key created")
	return nil
}

// JWTAuthorities implements api.Node: the site's JWT public keys by key ID.
func (s *Server) JWTAuthorities() (map[string]crypto.PublicKey, error) {
	site := s.store.Site()
	if site == nil {
		return nil, state.ErrNotBootstrapped
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
func (s *Server) jwtSigner() (jose.Signer, error) {
	site := s.store.Site()
	if site == nil || len(site.JwtKeys) == 0 {
		return nil, fmt.Errorf("no jwt signing key yet: %w", state.ErrNotBootstrapped)
	}
	k := site.JwtKeys[len(site.JwtKeys)-1]
	s.ca.mu.Lock()
	defer s.ca.mu.Unlock()
	if c := s.ca.jwt; c != nil && c.kid == k.Kid && bytes.Equal(c.sealed, k.SealedKey) {
		return c.signer, nil
	}
	der, err := s.id.kek.Open(k.SealedKey, s.jwtContext())
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
	s.ca.jwt = &jwtCache{kid: k.Kid, sealed: k.SealedKey, signer: signer}
	return signer, nil
}

// SignJWT implements api.Node: a JWT-SVID for id, valid for ttl.
func (s *Server) SignJWT(ctx context.Context, id spiffeid.ID, audience []string, ttl time.Duration) (string, error) {
	if err := s.signLimit.Wait(ctx); err != nil {
		return "", err
	}
	signer, err := s.jwtSigner()
	if err != nil {
		return "", err
	}
	now := s.cfg.Now()
	claims := jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(audience),
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}
