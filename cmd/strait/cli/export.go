package cli

import (
	"cmp"
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
)

func newExportCmd(g *globals) *cobra.Command {
	var ns, svc string
	var to []string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export a service to peer sites (only exported services ever leave a site)",
		Example: `  strait export --ns payments --svc api --to gcp-west
  strait export --ns payments --svc api --to '*'
  strait export list`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &apipb.ExportRequest{Export: &apipb.Export{Namespace: ns, Service: svc, To: to}}
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Federation.Export(ctx, req)
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				e := resp.Export
				fmt.Fprintf(g.stdout, "Exported %s/%s to %s\n", e.Namespace, e.Service, strings.Join(e.To, ", "))
				return nil
			})
		},
	}
	svcFlags(cmd.Flags(), &ns, &svc)
	cmd.Flags().StringSliceVar(&to, "to", nil, "peer names, or '*' for every peer (repeatable)")
	cmd.AddCommand(listCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List exported services and their peers",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListExportsResponse, error) {
		return cl.Federation.ListExports(ctx, &apipb.ListExportsRequest{})
	}, (*apipb.ListExportsResponse).GetExports, []string{"NAMESPACE", "SERVICE", "TO"}, func(e *apipb.Export) []string {
		return []string{e.Namespace, e.Service, strings.Join(e.To, ",")}
	}))
	return cmd
}

func newUnexportCmd(g *globals) *cobra.Command {
	var ns, svc string
	var from []string
	cmd := actionCmd(g, &cobra.Command{
		Use:   "unexport",
		Short: "Stop exporting a service (to some peers with --from, or to all)",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client, _ []string) error {
		_, err := cl.Federation.Unexport(ctx, &apipb.UnexportRequest{Namespace: ns, Service: svc, From: from})
		return err
	}, func([]string) string {
		to := "every peer"
		if len(from) > 0 {
			to = strings.Join(from, ", ")
		}
		return fmt.Sprintf("Stopped exporting %s/%s to %s", cmp.Or(ns, meshname.DefaultNamespace), svc, to)
	})
	svcFlags(cmd.Flags(), &ns, &svc)
	cmd.Flags().StringSliceVar(&from, "from", nil, "peers to stop exporting to (default: all)")
	return cmd
}
