package controlplane

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/cloud/aws"
	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/authority"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/jointoken"
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

// identityLoader prepares a server's identity before Raft starts: it
// loads it from the data dir, or creates it by bootstrapping a new site
// or joining an existing one.
type identityLoader struct {
	cfg       Config
	log       *slog.Logger
	advertise string
}

// prepareIdentity loads this server's identity, or creates it by
// bootstrapping a new site or joining an existing one.
func (l *identityLoader) prepareIdentity(ctx context.Context) (*identity, error) {
	c := &l.cfg
	if c.Dev {
		return l.newSiteIdentity(nil)
	}
	dd := dataDir(c.DataDir)
	n, err := dd.readNode()
	switch {
	case err == nil:
		if c.JoinToken != "" {
			l.log.Warn("join token ignored: the data dir already holds this server's identity", "data_dir", c.DataDir)
		}
		return l.loadIdentity(ctx, dd, n)
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	case dd.hasRaftState():
		return nil, fmt.Errorf("data_dir %s has Raft state but no node.json: an earlier bootstrap or join did not finish; remove the directory and start again", c.DataDir)
	case c.Bootstrap:
		kek, err := c.kekFile(l.log).LoadOrCreate(ctx, nil, c.Site, c.trustDomainName())
		if err != nil {
			return nil, err
		}
		id, err := l.newSiteIdentity(kek)
		if err != nil {
			return nil, err
		}
		id.persistent = true
		return id, dd.writeIdentity(id.chain, id.key, id.bundle)
	case len(c.Join) > 0 || len(c.RetryJoin) > 0:
		return l.join(ctx, dd)
	}
	return nil, fmt.Errorf("data_dir %s is empty: pass --bootstrap to create a new site, or --join (or retry_join) with --join-token to join one", c.DataDir)
}

// newSiteIdentity creates a CA and a server SVID for a new site.
func (l *identityLoader) newSiteIdentity(kek *keywrap.FileKEK) (*identity, error) {
	c := &l.cfg
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

func (l *identityLoader) loadIdentity(ctx context.Context, dd dataDir, n *nodeInfo) (*identity, error) {
	c := &l.cfg
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
	kek, err := c.kekFile(l.log).Load(ctx, n.Site, n.TrustDomain)
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
func (l *identityLoader) join(ctx context.Context, dd dataDir) (*identity, error) {
	c := &l.cfg
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
	req := &apipb.JoinRequest{NodeId: c.NodeID, Address: l.advertise, Csr: csr}
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
			if addr == l.advertise {
				continue // discovery finds this server too
			}
			resp, err := joinOne(ctx, addr, tok, req)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", addr, err))
				continue
			}
			id, err := l.acceptJoin(ctx, dd, resp, key)
			if err != nil {
				return nil, err
			}
			l.log.Info("joined site", "site", resp.Site, "trust_domain", resp.TrustDomain, "via", addr)
			return id, nil
		}
		if len(addrs) == 0 && len(errs) == 0 {
			errs = append(errs, errors.New("no server found yet"))
		}
		err := fmt.Errorf("join: no server admitted this one: %w", errors.Join(errs...))
		if len(c.RetryJoin) == 0 || refusedJoin(errs) {
			return nil, err
		}
		l.log.Warn("retry_join: not admitted yet; retrying", "servers", addrs, "retry_in", backoff, "err", err)
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

func (l *identityLoader) acceptJoin(ctx context.Context, dd dataDir, resp *apipb.JoinResponse, key crypto.Signer) (*identity, error) {
	c := &l.cfg
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
	kek, err := c.kekFile(l.log).LoadOrCreate(ctx, resp.Kek, resp.Site, td.Name())
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

// bootstrapCommand is the command that creates the site, and the
// management token's secret to hand to the operator.
func (s *Server) bootstrapCommand() (*statepb.Command, string, error) {
	root, err := authority.SealRoot(s.id.kek, s.id.td, s.id.bootstrap)
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
		Root:            root,
		ManagementToken: state.NewTokenRecord(tok, h[:], ""),
	}}}, secret, nil
}

func newIdentitySource(id *identity, now func() time.Time) (*mtls.Identity, error) {
	ident := mtls.NewIdentity(x509bundle.FromX509Authorities(id.td, id.bundle), now)
	return ident, ident.SetSVID(id.chain, id.key)
}
