// Package enroll is how a node that is not a server (an agent, a gateway)
// gets its first identity: with a join token that pins the site's CA, it
// makes a key (which never leaves the host), asks the site's servers in
// turn to sign a CSR for it, and keeps the result on disk (svidfile).
//
// It also holds how such a node learns that the site revoked it: servers
// refuse it with RevokedStatus, the node tells that from other refusals
// with IsRevoked, acts once RevocationWatch confirms it, and sets its
// identity aside with MarkRevoked so that a new token joins it again.
package enroll

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/jointoken"
	"github.com/straitmesh/strait/trust/mtls"
	"github.com/straitmesh/strait/trust/svidfile"
)

// Response is what a server answers to a join: DER certificates.
type Response struct {
	TrustDomain string
	SVID        [][]byte
	Bundle      [][]byte
}

// Identity is what enrollment yields.
type Identity struct {
	TrustDomain spiffeid.TrustDomain
	Chain       []*x509.Certificate
	Key         crypto.Signer
	Bundle      []*x509.Certificate
	// Via is the server that admitted the node.
	Via string
}

// enroll joins with token (a "<secret>.<pin>" join token) by calling join
// on each server in turn until one admits the node, then writes the
// identity into dir/tls and info (as JSON, merged with the trust domain)
// into dir/infoFile.
func enroll(ctx context.Context, servers []string, token, dir, infoFile string, info map[string]string,
	join func(ctx context.Context, conn *grpc.ClientConn, csr []byte) (*Response, error)) (*Identity, error) {
	tok, err := jointoken.Parse(token)
	if err != nil {
		return nil, err
	}
	key, err := ca.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := ca.NewCSR(key)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, addr := range servers {
		resp, err := joinAt(ctx, addr, tok, csr, join)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		id := &Identity{Key: key, Via: addr}
		if id.TrustDomain, err = spiffeid.TrustDomainFromString(resp.TrustDomain); err != nil {
			return nil, err
		}
		if id.Chain, err = ParseDERs(resp.SVID); err != nil {
			return nil, err
		}
		if id.Bundle, err = ParseDERs(resp.Bundle); err != nil {
			return nil, err
		}
		if err := svidfile.Write(filepath.Join(dir, "tls"), id.Chain, key, id.Bundle); err != nil {
			return nil, err
		}
		merged := map[string]string{"trust_domain": id.TrustDomain.Name()}
		for k, v := range info {
			merged[k] = v
		}
		b, _ := json.Marshal(merged)
		if err := svidfile.WriteFileAtomic(filepath.Join(dir, infoFile), b, 0o644); err != nil {
			return nil, err
		}
		return id, nil
	}
	return nil, fmt.Errorf("join: no server admitted this node: %w", errors.Join(errs...))
}

func joinAt(ctx context.Context, addr string, tok jointoken.Token, csr []byte,
	join func(context.Context, *grpc.ClientConn, []byte) (*Response, error)) (*Response, error) {
	conn, err := jointoken.Dial(addr, tok)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return join(ctx, conn, csr)
}

// ParseDERs parses certificates a server sent.
func ParseDERs(ders [][]byte) ([]*x509.Certificate, error) {
	out := make([]*x509.Certificate, 0, len(ders))
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("certificate from server: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

// ErrNotEnrolled is returned by Load when dir holds no identity yet.
var ErrNotEnrolled = errors.New("not enrolled yet")

// Load reads the identity enroll kept in dir, checking that the info
// file's nameKey names this node (a data dir belongs to one node).
func Load(dir, infoFile, nameKey, name string) (*Identity, error) {
	path := filepath.Join(dir, infoFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, err
	}
	var info map[string]string
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if info[nameKey] != name {
		return nil, fmt.Errorf("%s: configured %q but %s belongs to %q", nameKey, name, dir, info[nameKey])
	}
	id := &Identity{}
	if id.TrustDomain, err = spiffeid.TrustDomainFromString(info["trust_domain"]); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if id.Chain, id.Key, id.Bundle, err = svidfile.Read(filepath.Join(dir, "tls")); err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	return id, nil
}

// Node is an agent or a gateway, for LoadOrEnroll.
type Node struct {
	// Kind names the node in errors ("agent", "gateway").
	Kind string
	// Dir, InfoFile, NameKey and Name: where the identity is kept and
	// whose it is (see Load).
	Dir, InfoFile, NameKey, Name string
	// Servers and Token: how to enroll when Dir holds no identity yet.
	Servers []string
	Token   string
	// Join asks a server to sign the node's CSR (see enroll).
	Join func(ctx context.Context, conn *grpc.ClientConn, csr []byte) (*Response, error)
	// Now is the clock of the mTLS identity; time.Now when nil.
	Now func() time.Time
	// Logger says when Token is not used; slog.Default when nil.
	Logger *slog.Logger
}

// LoadOrEnroll loads the identity kept in n.Dir, or enrolls with n.Token
// when there is none yet, and returns it as an mTLS identity.
// enrolled reports a fresh enrollment (for logging; id.Via says where).
func LoadOrEnroll(ctx context.Context, n Node) (id *Identity, ident *mtls.Identity, enrolled bool, err error) {
	if n.Logger == nil {
		n.Logger = slog.Default()
	}
	id, err = Load(n.Dir, n.InfoFile, n.NameKey, n.Name)
	switch {
	case err == nil:
		if n.Token != "" {
			n.Logger.Warn("join token ignored: the data dir already holds this node's identity; to join again, revoke it (strait "+n.Kind+" revoke), then start it with a new token: the revoked identity is set aside",
				"kind", n.Kind, "data_dir", n.Dir)
		}
	case !errors.Is(err, ErrNotEnrolled):
		return nil, nil, false, err
	case n.Token == "" && wasRevoked(n.Dir, n.InfoFile):
		return nil, nil, false, fmt.Errorf("this %s was revoked: to re-join, create a new token with `strait token create --kind %s` and pass it with --join-token", n.Kind, n.Kind)
	case n.Token == "":
		return nil, nil, false, fmt.Errorf("this %s has not joined a site yet: pass --join-token (create one with `strait token create --kind %s`)", n.Kind, n.Kind)
	default:
		if id, err = enroll(ctx, n.Servers, n.Token, n.Dir, n.InfoFile, map[string]string{n.NameKey: n.Name}, n.Join); err != nil {
			return nil, nil, false, err
		}
		enrolled = true
	}
	ident = mtls.NewIdentity(x509bundle.FromX509Authorities(id.TrustDomain, id.Bundle), n.Now)
	if err := ident.SetSVID(id.Chain, id.Key); err != nil {
		return nil, nil, false, err
	}
	return id, ident, enrolled, nil
}
