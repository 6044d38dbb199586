// Package apiclient connects to a site's API: it verifies that the server
// holds a server SVID of the site (from the site's CA certificates) and
// sends the caller's token with every call. Unavailable errors (no leader
// during an election, a server restarting) are retried with backoff.
//
// A Client is safe for concurrent use.
package apiclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/mtls"
	"github.com/straitmesh/strait/trust/svidfile"
)

// Config says where and how to connect.
type Config struct {
	// Addr is a server's host:port. Required unless Addrs is set.
	Addr string
	// Addrs are several servers of the site; the client uses the first
	// that answers and fails over to the others, in order, when one cannot
	// be reached.
	Addrs []string
	// Token is the ACL token secret; calls are unauthenticated when empty.
	Token string
	// CA holds the site's CA certificates. One of CA and CAFile is required.
	CA []*x509.Certificate
	// CAFile is a PEM file with the site's CA certificates (a server's
	// <data_dir>/tls/ca.pem).
	CAFile string
	// Identity, when set, is presented as a client SVID (servers use it).
	Identity *mtls.Identity
}

// Client is a connection to a site's API.
type Client struct {
	conn       *grpc.ClientConn
	td         spiffeid.TrustDomain
	Catalog    apipb.CatalogClient
	ACL        apipb.ACLClient
	Operator   apipb.OperatorClient
	Cluster    apipb.ClusterClient
	Workload   apipb.WorkloadClient
	Identity   apipb.IdentityClient
	Bundle     apipb.BundleClient
	Federation apipb.FederationClient
	Intentions apipb.IntentionsClient
	Gateway    apipb.GatewayClient
}

// retryPolicy retries calls that failed Unavailable: no leader yet, or a
// forwarded call that met a leadership change.
const retryPolicy = `{
  "methodConfig": [{
    "name": [{"service": "strait.api.v1.Catalog"}, {"service": "strait.api.v1.ACL"}, {"service": "strait.api.v1.Operator"}, {"service": "strait.api.v1.Workload"}, {"service": "strait.api.v1.Identity"}, {"service": "strait.api.v1.Bundle"}, {"service": "strait.api.v1.Federation"}, {"service": "strait.api.v1.Intentions"}, {"service": "strait.api.v1.Gateway"}],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.2s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// Dial connects lazily; the first call does the handshake.
func Dial(cfg Config) (*Client, error) {
	if cfg.Addr != "" {
		cfg.Addrs = append([]string{cfg.Addr}, cfg.Addrs...)
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("no server address: set STRAIT_ADDR or pass --addr")
	}
	certs := cfg.CA
	if len(certs) == 0 {
		if cfg.CAFile == "" {
			return nil, errors.New("no CA: set STRAIT_CA_FILE or pass --ca-file (a server's <data_dir>/tls/ca.pem)")
		}
		b, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read ca file: %w", err)
		}
		if certs, err = svidfile.ParseCerts(b); err != nil {
			return nil, fmt.Errorf("ca file %s: %w", cfg.CAFile, err)
		}
	}
	td, err := trustDomainOf(certs)
	if err != nil {
		return nil, err
	}
	ident := cfg.Identity
	if ident == nil {
		ident = mtls.NewIdentity(x509bundle.FromX509Authorities(td, certs), nil)
	}
	authorize := func(id spiffeid.ID) error {
		if !trust.IsServer(id, td) {
			return fmt.Errorf("%s is not a server of %s", id, td)
		}
		return nil
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(mtls.ClientConfig(ident, authorize, mtls.ProtoGRPC))),
		grpc.WithDefaultServiceConfig(retryPolicy),
	}
	if cfg.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCreds(cfg.Token)))
	}
	target := cfg.Addrs[0]
	if len(cfg.Addrs) > 1 {
		r := manual.NewBuilderWithScheme("strait")
		var addrs []resolver.Address
		for _, a := range cfg.Addrs {
			addrs = append(addrs, resolver.Address{Addr: a})
		}
		r.InitialState(resolver.State{Addresses: addrs})
		opts = append(opts, grpc.WithResolvers(r))
		target = r.Scheme() + ":///site"
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:       conn,
		td:         td,
		Catalog:    apipb.NewCatalogClient(conn),
		ACL:        apipb.NewACLClient(conn),
		Operator:   apipb.NewOperatorClient(conn),
		Cluster:    apipb.NewClusterClient(conn),
		Workload:   apipb.NewWorkloadClient(conn),
		Identity:   apipb.NewIdentityClient(conn),
		Bundle:     apipb.NewBundleClient(conn),
		Federation: apipb.NewFederationClient(conn),
		Intentions: apipb.NewIntentionsClient(conn),
		Gateway:    apipb.NewGatewayClient(conn),
	}, nil
}

// TrustDomain is the trust domain of the CA the client verifies servers
// against: the site it means to talk to.
func (c *Client) TrustDomain() string { return c.td.Name() }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func trustDomainOf(certs []*x509.Certificate) (spiffeid.TrustDomain, error) {
	for _, c := range certs {
		if c.IsCA && len(c.URIs) == 1 {
			id, err := spiffeid.FromURI(c.URIs[0])
			if err == nil {
				return id.TrustDomain(), nil
			}
		}
	}
	return spiffeid.TrustDomain{}, errors.New("ca file holds no SPIFFE CA certificate (one with a spiffe:// URI)")
}

type tokenCreds string

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity: tokens are only ever sent over TLS.
func (tokenCreds) RequireTransportSecurity() bool { return true }

// Conn is the underlying connection, for services outside the API (xDS).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }
