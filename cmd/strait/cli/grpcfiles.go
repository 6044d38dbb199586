package cli

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/proxyless"
	"github.com/straitmesh/strait/trust/svidfile"
)

func newWorkloadGRPCFilesCmd(g *globals) *cobra.Command {
	var (
		socket, dir, node string
		servers           []string
		once              bool
	)
	cmd := &cobra.Command{
		Use:   "grpc-files",
		Short: "Keep a proxyless gRPC client's xDS bootstrap, SVID and bundles in a directory",
		Long: `Write what a grpc-go client needs to call other sites' services with xds:///NAME and no
sidecar: bootstrap.json (set GRPC_XDS_BOOTSTRAP to it), the workload's SVID and key (0600),
and a SPIFFE bundle map of every trust domain, fetched from the agent's Workload API and
rewritten at every rotation. grpc-go needs GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true.`,
		Example: `  strait workload grpc-files --socket unix:///run/strait/agent.sock --dir /run/app/xds \
      --server 10.0.1.5:7400 --node web/front-1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			socket = cmp.Or(socket, os.Getenv("SPIFFE_ENDPOINT_SOCKET"))
			if socket == "" || dir == "" || len(servers) == 0 || node == "" {
				return usageError{fmt.Errorf("--socket (or SPIFFE_ENDPOINT_SOCKET), --dir, --server and --node are required")}
			}
			boot, err := proxyless.Bootstrap(servers, node, dir)
			if err != nil {
				return usageError{err}
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			if err := svidfile.WriteFileAtomic(filepath.Join(dir, "bootstrap.json"), boot, 0o644); err != nil {
				return err
			}
			ctx := cmd.Context()
			if once {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				return proxyless.Keep(ctx, socket, dir, func(s *x509svid.SVID) {
					fmt.Fprintf(g.stdout, "Wrote %s for %s\n", dir, s.ID)
					cancel()
				})
			}
			return proxyless.Keep(ctx, socket, dir, func(s *x509svid.SVID) {
				fmt.Fprintf(g.stdout, "Wrote %s for %s (expires %s)\n", dir, s.ID, s.Certificates[0].NotAfter.Format("2006-01-02T15:04:05Z07:00"))
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "the agent's Workload API, unix:///PATH (env SPIFFE_ENDPOINT_SOCKET)")
	f.StringVar(&dir, "dir", "", "directory for bootstrap.json, svid.pem, svid_key.pem, bundles.json")
	f.StringSliceVar(&servers, "server", nil, "the site's servers (repeatable)")
	f.StringVar(&node, "node", "", "the xDS node ID (a name for this client; not gateway/...)")
	f.BoolVar(&once, "once", false, "write once and exit")
	return cmd
}
