package controlplane

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/cloud/aws"
	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/jointoken"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/keywrap"
	"github.com/straitmesh/strait/trust/mtls"
)

// identity is what a server knows about itself before Raft starts.
type identity struct {
	node       nodeInfo
	td         spiffeid.TrustDomain
	kek        *keywrap.FileKEK
	chain      []*x509.Certificate
	key        crypto.Signer
	bundle     []*x509.Certificate
	bootstrap  *ca.CA // set when this start bootstraps the site
	persistent bool   // write node.json once the site exists
}

// prepareIdentity loads this server's identity, or creates it by
// bootstrapping a new site or joining an existing one.
func (s *Server) prepareIdentity(ctx context.Context) (*identity, error) {
	c := &s.cfg
	if c.Dev {
		return s.newSiteIdentity(nil)
	}
	dd := dataDir(c.DataDir)
	n, err := dd.readNode()
	switch {
	case err == nil:
		if c.JoinToken != "" {
			s.log.Warn("join token ignored: the data dir already holds this server's identity", "data_dir", c.DataDir)
		}
		return s.loadIdentity(ctx, dd, n)
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	case dd.hasRaftState():
		return nil, fmt.Errorf("data_dir %s has Raft state but no node.json: an earlier bootstrap or join did not finish; remove the directory and start again", c.DataDir)
	case c.Bootstrap:
		kek, err := s.loadOrCreateKEK(ctx, nil, c.Site, c.trustDomainName())
		if err != nil {
			return nil, err
		}
		id, err := s.newSiteIdentity(kek)
		if err != nil {
			return nil, err
		}
		id.persistent = true
		return id, dd.writeIdentity(id.chain, id.key, id.bundle)
	case len(c.Join) > 0 || len(c.RetryJoin) > 0:
		return s.join(ctx, dd)
	}
	return nil, fmt.Errorf("data_dir %s is empty: pass --bootstrap to create a new site, or --join (or retry_join) with --join-token to join one", c.DataDir)
}

// loadOrCreateKEK loads the KEK file, or creates it: from raw (a joining
// server receives the site's KEK) or fresh (bootstrap). With a key
// service, the file is an envelope (see keywrap.Envelope) bound to the
// site and trust domain.
func (s *Server) loadOrCreateKEK(ctx context.Context, raw []byte, site, td string) (*keywrap.FileKEK, error) {
	if k, err := s.loadKEK(ctx, site, td); err == nil {
		if raw != nil && !bytes.Equal(k.Raw(), raw) {
			return nil, fmt.Errorf("kek_file %s holds a different key from the site's; remove it or point kek_file elsewhere", s.cfg.KEKFile)
		}
		return k, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var k *keywrap.FileKEK
	var err error
	if raw != nil {
		k, err = keywrap.New(raw)
	} else {
		k, err = keywrap.Generate()
	}
	if err != nil {
		return nil, err
	}
	if ks := s.cfg.KeyService; ks != nil {
		env, err := keywrap.SealEnvelope(ctx, k, ks, s.cfg.KeyServiceName, kekContext(site, td), s.cfg.Now())
		if err != nil {
			return nil, fmt.Errorf("kek_file %s: %w", s.cfg.KEKFile, err)
		}
		return k, keywrap.WriteEnvelope(s.cfg.KEKFile, env, false)
	}
	return k, keywrap.WriteFile(s.cfg.KEKFile, k)
}

// kekContext binds a KEK envelope to its site.
func kekContext(site, td string) map[string]string {
	return map[string]string{"strait:site": site, "strait:trust-domain": td}
}

// loadKEK reads the KEK file: a plain key, or with a key service an
// envelope, which it opens (and re-seals under a new data key when the
// data key is older than DataKeyRotation).
func (s *Server) loadKEK(ctx context.Context, site, td string) (*keywrap.FileKEK, error) {
	ks := s.cfg.KeyService
	if ks == nil {
		return keywrap.LoadFile(s.cfg.KEKFile)
	}
	env, err := keywrap.ReadEnvelope(s.cfg.KEKFile)
	if err != nil {
		return nil, err
	}
	k, err := env.Open(ctx, ks, kekContext(site, td))
	if err != nil {
		return nil, fmt.Errorf("kek_file %s: %w (the file is unchanged)", s.cfg.KEKFile, err)
	}
	if age := s.cfg.Now().Sub(env.Created); s.cfg.DataKeyRotation > 0 && age >= s.cfg.DataKeyRotation {
		if err := s.rotateDataKey(ctx, k, site, td); err != nil {
			// The old data key still opens the KEK: keep serving, try again next start.
			s.log.Warn("data key rotation failed; the current data key stays in use", "kek_file", s.cfg.KEKFile, "age", age.Round(time.Second), "err", err)
		}
	}
	return k, nil
}

// rotateDataKey re-seals k under a new data key, replacing the envelope
// atomically.
func (s *Server) rotateDataKey(ctx context.Context, k *keywrap.FileKEK, site, td string) error {
	env, err := keywrap.SealEnvelope(ctx, k, s.cfg.KeyService, s.cfg.KeyServiceName, kekContext(site, td), s.cfg.Now())
	if err != nil {
		return err
	}
	if err := keywrap.WriteEnvelope(s.cfg.KEKFile, env, true); err != nil {
		return err
	}
	s.log.Info("data key rotated", "kek_file", s.cfg.KEKFile, "key_id", env.KeyID)
	return nil
}

// newSiteIdentity creates a CA and a server SVID for a new site.
func (s *Server) newSiteIdentity(kek *keywrap.FileKEK) (*identity, error) {
	c := &s.cfg
	if kek == nil {
		var err error
		if kek, err = keywrap.Generate(); err != nil {
			return nil, err
		}
	}
	td, err := spiffeid.TrustDomainFromString(c.trustDomainName())
	if err != nil {
		return nil, fmt.Errorf("trust_domain: %w", err)
	}
	root, err := ca.Generate(td, c.Now(), 0)
	if err != nil {
		return nil, err
	}
	key, err := ca.NewKey()
	if err != nil {
		return nil, err
	}
	sid, err := trust.ServerID(td, c.NodeID)
	if err != nil {
		return nil, err
	}
	leaf, err := root.SignX509SVID(sid, key.Public(), c.Now(), c.ServerSVIDTTL)
	if err != nil {
		return nil, err
	}
	return &identity{
		node:  nodeInfo{NodeID: c.NodeID, Site: c.Site, TrustDomain: td.Name()},
		td:    td,
		kek:   kek,
		chain: []*x509.Certificate{leaf}, key: key,
		bundle:    []*x509.Certificate{root.Certificate()},
		bootstrap: root,
	}, nil
}

func (s *Server) loadIdentity(ctx context.Context, dd dataDir, n *nodeInfo) (*identity, error) {
	c := &s.cfg
	if c.Site != "" && c.Site != n.Site {
		return nil, fmt.Errorf("site: configured %q but data_dir %s belongs to site %q", c.Site, c.DataDir, n.Site)
	}
	if c.NodeID != n.NodeID {
		return nil, fmt.Errorf("node_name: configured %q but data_dir %s belongs to node %q", c.NodeID, c.DataDir, n.NodeID)
	}
	td, err := spiffeid.TrustDomainFromString(n.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dd.nodeFile(), err)
	}
	kek, err := s.loadKEK(ctx, n.Site, n.TrustDomain)
	if err != nil {
		return nil, err
	}
	chain, key, bundle, err := dd.readIdentity()
	if err != nil {
		return nil, fmt.Errorf("load server identity: %w", err)
	}
	return &identity{node: *n, td: td, kek: kek, chain: chain, key: key, bundle: bundle, persistent: true}, nil
}

// join asks an existing server to admit this one.
func (s *Server) join(ctx context.Context, dd dataDir) (*identity, error) {
	c := &s.cfg
	tok, err := jointoken.Parse(c.JoinToken)
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
	req := &apipb.JoinRequest{NodeId: c.NodeID, Address: s.advertise, Csr: csr}
	backoff := time.Second
	for {
		addrs := c.Join
		var errs []error
		if len(c.RetryJoin) > 0 {
			found, err := aws.ResolveAddrs(ctx, c.RetryJoin, c.AWS)
			if err != nil {
				errs = append(errs, err)
			}
			addrs = append(append([]string(nil), c.Join...), found...)
		}
		for _, addr := range addrs {
			if addr == s.advertise {
				continue // discovery finds this server too
			}
			resp, err := joinOne(ctx, addr, tok, req)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", addr, err))
				continue
			}
			id, err := s.acceptJoin(ctx, dd, resp, key)
			if err != nil {
				return nil, err
			}
			s.log.Info("joined site", "site", resp.Site, "trust_domain", resp.TrustDomain, "via", addr)
			return id, nil
		}
		if len(addrs) == 0 && len(errs) == 0 {
			errs = append(errs, errors.New("no server found yet"))
		}
		err := fmt.Errorf("join: no server admitted this one: %w", errors.Join(errs...))
		if len(c.RetryJoin) == 0 || refusedJoin(errs) {
			return nil, err
		}
		s.log.Warn("retry_join: not admitted yet; retrying", "servers", addrs, "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// refusedJoin reports whether a server refused the join for good (a bad,
// used or expired token): retrying cannot help.
func refusedJoin(errs []error) bool {
	for _, err := range errs {
		for e := err; e != nil; e = errors.Unwrap(e) {
			if st, ok := status.FromError(e); ok {
				switch st.Code() {
				case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.AlreadyExists:
					return true
				}
			}
		}
	}
	return false
}

func joinOne(ctx context.Context, addr string, tok jointoken.Token, req *apipb.JoinRequest) (*apipb.JoinResponse, error) {
	conn, err := jointoken.Dial(addr, tok)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return apipb.NewClusterClient(conn).Join(ctx, req)
}

func (s *Server) acceptJoin(ctx context.Context, dd dataDir, resp *apipb.JoinResponse, key crypto.Signer) (*identity, error) {
	c := &s.cfg
	if c.Site != "" && c.Site != resp.Site {
		return nil, fmt.Errorf("join: token belongs to site %q, this server is configured for %q", resp.Site, c.Site)
	}
	td, err := spiffeid.TrustDomainFromString(resp.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	parse := func(ders [][]byte) ([]*x509.Certificate, error) {
		var out []*x509.Certificate
		for _, d := range ders {
			c, err := x509.ParseCertificate(d)
			if err != nil {
				return nil, fmt.Errorf("join: bad certificate in response: %w", err)
			}
			out = append(out, c)
		}
		return out, nil
	}
	chain, err := parse(resp.Svid)
	if err != nil {
		return nil, err
	}
	bundle, err := parse(resp.Bundle)
	if err != nil {
		return nil, err
	}
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, bundle))
	if err != nil {
		return nil, fmt.Errorf("join: issued SVID does not verify: %w", err)
	}
	if want, _ := trust.ServerID(td, c.NodeID); id != want {
		return nil, fmt.Errorf("join: issued SVID is %s, want %s", id, want)
	}
	kek, err := s.loadOrCreateKEK(ctx, resp.Kek, resp.Site, td.Name())
	if err != nil {
		return nil, err
	}
	if err := dd.writeIdentity(chain, key, bundle); err != nil {
		return nil, err
	}
	n := nodeInfo{NodeID: c.NodeID, Site: resp.Site, TrustDomain: td.Name(), JoinIndex: resp.Index}
	if err := dd.writeNode(&n); err != nil {
		return nil, err
	}
	return &identity{node: n, td: td, kek: kek, chain: chain, key: key, bundle: bundle, persistent: true}, nil
}

// siteCA returns the CA from the replicated state, opened with the KEK.
type caCache struct {
	mu   sync.Mutex
	cert []byte
	ca   *ca.CA
	jwt  *jwtCache
}

func (s *Server) siteCA() (*ca.CA, error) {
	site := s.store.Site()
	if site == nil {
		return nil, state.ErrNotBootstrapped
	}
	s.ca.mu.Lock()
	defer s.ca.mu.Unlock()
	if s.ca.ca != nil && bytes.Equal(s.ca.cert, site.Root.Certificate) {
		return s.ca.ca, nil
	}
	keyDER, err := s.id.kek.Open(site.Root.SealedKey, []byte(site.TrustDomain))
	if err != nil {
		return nil, fmt.Errorf("open site ca key: %w", err)
	}
	c, err := ca.Load(site.Root.Certificate, keyDER)
	if err != nil {
		return nil, err
	}
	s.ca.cert, s.ca.ca = site.Root.Certificate, c
	return c, nil
}

// bootstrapCommand is the command that creates the site, and the
// management token's secret to hand to the operator.
func (s *Server) bootstrapCommand() (*statepb.Command, string, error) {
	root := s.id.bootstrap
	keyDER, err := root.MarshalKey()
	if err != nil {
		return nil, "", err
	}
	sealed, err := s.id.kek.Seal(keyDER, []byte(s.id.td.Name()))
	if err != nil {
		return nil, "", err
	}
	secret, tok, err := api.NewManagementToken(s.cfg.Now())
	if err != nil {
		return nil, "", err
	}
	h := state.HashSecret(secret)
	return &statepb.Command{Cmd: &statepb.Command_Bootstrap{Bootstrap: &statepb.Bootstrap{
		Site:            s.id.node.Site,
		TrustDomain:     s.id.td.Name(),
		Root:            &statepb.CARoot{Certificate: root.Certificate().Raw, SealedKey: sealed},
		ManagementToken: state.NewTokenRecord(tok, h[:], ""),
	}}}, secret, nil
}

// TokenPin is the CA pin appended to server and agent join tokens: the
// active root's, which signs the servers' SVIDs.
func (s *Server) TokenPin() string {
	if root, err := s.siteCA(); err == nil {
		return jointoken.EncodePin(root.Certificate())
	}
	return jointoken.EncodePin(s.ident.Bundle().X509Authorities()[0])
}

// renewSVID re-issues this server's SVID from the site CA when it is past
// half its lifetime. It runs on every server (each holds the KEK).
func (s *Server) renewSVID() error {
	cur := s.ident.SVID()
	leaf := cur.Certificates[0]
	now := s.cfg.Now()
	root, err := s.siteCA()
	if err != nil {
		return err
	}
	if now.Before(ca.RenewAt(leaf)) && ca.IssuedBy(leaf, root.Certificate()) {
		return nil
	}
	key, err := ca.NewKey()
	if err != nil {
		return err
	}
	cert, err := root.SignX509SVID(cur.ID, key.Public(), now, s.cfg.ServerSVIDTTL)
	if err != nil {
		return err
	}
	chain := []*x509.Certificate{cert}
	if s.id.persistent {
		if err := dataDir(s.cfg.DataDir).writeIdentity(chain, key, s.ident.Bundle().X509Authorities()); err != nil {
			return err
		}
	}
	s.log.Info("server svid renewed", "id", cur.ID.String(), "expires", cert.NotAfter)
	return s.ident.SetSVID(chain, key)
}

func bundleOf(td spiffeid.TrustDomain, certs []*x509.Certificate) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(td, certs)
}

func newIdentitySource(id *identity, now func() time.Time) (*mtls.Identity, error) {
	ident := mtls.NewIdentity(x509bundle.FromX509Authorities(id.td, id.bundle), now)
	return ident, ident.SetSVID(id.chain, id.key)
}
