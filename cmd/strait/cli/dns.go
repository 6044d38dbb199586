package cli

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/dns"
)

// streamWatcher adapts the API's catalog watch stream to dns.Watcher.
type streamWatcher struct {
	stream apipb.Catalog_WatchClient
}

func (w streamWatcher) Next(context.Context) (*apipb.WatchEvent, error) { return w.stream.Recv() }

func newDNSCmd(g *globals) *cobra.Command {
	var (
		listen, domain string
		upstreams      []string
		peerOrder      []string
		allowFrom      []string
	)
	cmd := &cobra.Command{
		Use:   "dns",
		Short: "Run a host-local mesh DNS resolver fed by a server's catalog watch",
		Long: `Run mesh DNS on this host, fed over the API by a site's server (--addr, a read token
and the CA file, as for every client command). Names outside the mesh domain go to
--upstream for clients in --allow-recursion-from (default: loopback and the private
ranges of this host's interface addresses), or are refused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var acl []netip.Prefix
			for _, a := range allowFrom {
				p, err := netip.ParsePrefix(a)
				if err != nil {
					return fmt.Errorf("--allow-recursion-from: %q is not a CIDR (write 10.0.0.0/8, 192.0.2.7/32 or fd00::/8)", a)
				}
				acl = append(acl, p.Masked())
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx := cmd.Context()
			st, err := cl.Operator.Status(ctx, &apipb.StatusRequest{})
			if err != nil {
				return err
			}
			fc := FileConfig{}
			srv, err := dns.New(dns.Config{
				Addr: listen, Domain: domain, Site: st.Site, Upstreams: upstreams, AllowRecursionFrom: acl, PeerOrder: peerOrder, Logger: fc.logger(g.stderr),
				Watch: func(ctx context.Context, from uint64) (dns.Watcher, error) {
					s, err := cl.Catalog.Watch(ctx, &apipb.WatchRequest{FromIndex: from})
					if err != nil {
						return nil, err
					}
					return streamWatcher{s}, nil
				},
			})
			if err != nil {
				return err
			}
			return srv.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:8600", "address to serve DNS on (UDP and TCP)")
	f.StringVar(&domain, "domain", "mesh.", "the mesh domain")
	f.StringSliceVar(&upstreams, "upstream", nil, "resolvers for other names (host:port, repeatable)")
	f.StringSliceVar(&allowFrom, "allow-recursion-from", nil, "client networks (CIDRs, repeatable) whose other names go upstream (default: loopback and this host's private ranges)")
	f.StringSliceVar(&peerOrder, "peer-order", nil, "failover preference of <svc>.<ns>.<domain> among peers (local names)")
	return cmd
}

var _ dns.Watcher = streamWatcher{}
