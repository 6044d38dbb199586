// Package jointoken is the format of the tokens that admit a new server or
// agent to a site, and the TLS configuration that uses one to reach the
// site before holding any certificate of it.
//
// A join token is "<secret>.<pin>": the secret is an ACL token secret
// ("strait_" and 256 random bits, base64url), the pin is the SHA-256 of the
// site CA's public key (SubjectPublicKeyInfo), base64url. The pin lets the
// newcomer check that it is talking to the site that issued the token.
//
// Stateless; safe to import from anywhere.
package jointoken

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"

	"github.com/straitmesh/strait/trust"
)

const secretPrefix = "strait_"

// Token is a parsed join token.
type Token struct {
	Secret string
	Pin    [sha256.Size]byte
}

// Parse splits a join token into its secret and CA pin.
func Parse(s string) (Token, error) {
	secret, pin, ok := strings.Cut(strings.TrimSpace(s), ".")
	if !ok || !strings.HasPrefix(secret, secretPrefix) || len(secret) != len(secretPrefix)+43 {
		return Token{}, errors.New("join token is malformed or truncated: copy the whole output of `strait token create`")
	}
	b, err := base64.RawURLEncoding.DecodeString(pin)
	if err != nil || len(b) != sha256.Size {
		return Token{}, errors.New("join token has a malformed CA pin: copy the whole token")
	}
	var t Token
	t.Secret = secret
	copy(t.Pin[:], b)
	return t, nil
}

// pinOf is the SHA-256 of a CA certificate's public key.
func pinOf(c *x509.Certificate) [sha256.Size]byte { return sha256.Sum256(c.RawSubjectPublicKeyInfo) }

// EncodePin is the token suffix for a CA certificate.
func EncodePin(c *x509.Certificate) string {
	p := pinOf(c)
	return base64.RawURLEncoding.EncodeToString(p[:])
}

// clientConfig trusts a server whose chain ends in a CA matching pin and
// whose SVID names a server of that CA's trust domain. Servers present
// their CA after their leaf for this.
func clientConfig(pin [sha256.Size]byte) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true, // verified below against the pinned CA
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs := make([]*x509.Certificate, 0, len(raw))
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				certs = append(certs, c)
			}
			for _, c := range certs {
				if !c.IsCA || pinOf(c) != pin || len(c.URIs) != 1 {
					continue
				}
				tdID, err := spiffeid.FromURI(c.URIs[0])
				if err != nil {
					continue
				}
				td := tdID.TrustDomain()
				id, _, err := x509svid.Verify(certs, x509bundle.FromX509Authorities(td, []*x509.Certificate{c}))
				if err != nil {
					return fmt.Errorf("server certificate does not verify against the pinned CA: %w", err)
				}
				if !trust.IsServer(id, td) {
					return fmt.Errorf("peer %s is not a server of %s", id, td)
				}
				return nil
			}
			return errors.New("the server's CA does not match the join token's pin: is this the site that issued the token?")
		},
	}
}

// Dial connects to a site's server trusting only the token's pin, and
// sends the token's secret with every call.
func Dial(addr string, t Token) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(clientConfig(t.Pin))),
		grpc.WithPerRPCCredentials(bearer(t.Secret)),
		// A server that accepts connections but is not serving yet (it is
		// joining too) must not hold a joiner for gRPC's default 20s.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: 5 * time.Second}))
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }
