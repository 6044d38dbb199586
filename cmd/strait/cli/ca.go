package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// tsString formats a timestamp, or "-" when it is unset or the zero of
// either clock (an unset time must never read as 1970).
func tsString(ts *timestamppb.Timestamp, layout string) string {
	if ts == nil || (ts.Seconds == 0 && ts.Nanos == 0) || ts.AsTime().IsZero() {
		return "-"
	}
	return ts.AsTime().Format(layout)
}

func newCACmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Inspect and rotate the site's CA"}
	cmd.AddCommand(&cobra.Command{
		Use:   "rotate",
		Short: "Start a CA rotation: publish a new root now; it signs after the propagation delay",
		Long: `Start a CA rotation. The new root is published in the trust bundle at once and
starts signing after ca_propagation_delay (1h by default), when every agent, workload
and peer trusts it; servers and agents then re-issue their SVIDs from it, and the old
root stays trusted until every leaf it signed has expired. No handshake fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Operator.RotateCA(ctx, &apipb.RotateCARequest{})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				fmt.Fprintf(g.stdout, "Prepared root %s; it starts signing at %s\n", resp.Prepared.SubjectKeyId, resp.Prepared.NextStep.AsTime().Format(time.RFC3339))
				return nil
			})
		},
	}, &cobra.Command{
		Use:   "status",
		Short: "Show the site's CA roots and their phases",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				st, err := cl.Operator.CAStatus(ctx, &apipb.CAStatusRequest{})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(st)
				}
				fmt.Fprintf(g.stdout, "Bundle sequence %d\n", st.BundleSequence)
				t := newTable(g.stdout, "PHASE", "KEY ID", "EXPIRES", "SINCE", "NEXT STEP")
				for _, r := range st.Roots {
					t.row(r.Phase, r.SubjectKeyId[:min(16, len(r.SubjectKeyId))], tsString(r.NotAfter, "2006-01-02"), tsString(r.Since, time.RFC3339), tsString(r.NextStep, time.RFC3339))
				}
				return t.flush()
			})
		},
	})
	return cmd
}
