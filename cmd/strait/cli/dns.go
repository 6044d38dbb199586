package cli

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

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
				cfg, _ := g.clientConfig()
				return explainConn(err, cfg.Addrs, cl.TrustDomain())
			}
			// Bind here, so that a port in use fails now, and the
			// message below says where it really listens.
			pc, ln, err := listenDNS(listen)
			if err != nil {
				return err
			}
			defer pc.Close()
			defer ln.Close()
			fc := FileConfig{}
			srv, err := dns.New(dns.Config{
				Addr: listen, PacketConn: pc, Listener: ln, Domain: domain, Site: st.Site, Upstreams: upstreams, AllowRecursionFrom: acl, PeerOrder: peerOrder, Logger: fc.logger(g.stderr),
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
			fwd := "refused"
			if len(upstreams) > 0 {
				from := "loopback and this host's private networks"
				if len(allowFrom) > 0 {
					from = strings.Join(allowFrom, ", ")
				}
				fwd = "forwarded to " + strings.Join(upstreams, ", ") + " for clients in " + from
			}
			fmt.Fprintf(g.stderr, "Mesh DNS of site %s on %s (UDP and TCP): names under %s from the catalog; other names %s\n", st.Site, pc.LocalAddr(), domain, fwd)
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

// listenDNS binds UDP and TCP on the same address. With port 0, the port
// the system picks for UDP may be taken for TCP: it tries a few.
func listenDNS(addr string) (net.PacketConn, net.Listener, error) {
	_, port, _ := net.SplitHostPort(addr)
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: --listen %s: %w", addr, err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if port != "0" || attempt == 9 {
			return nil, nil, fmt.Errorf("dns: --listen %s (tcp): %w", addr, err)
		}
	}
}
