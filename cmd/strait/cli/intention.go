package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

func newIntentionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "intention",
		Short: "Allow or deny connections from other sites' services to this site's services",
		Long: `Intentions authorize connections arriving through this site's gateways. Across
sites, everything not allowed is denied. A source is <site>/<namespace>/<service>, where the
namespace and service may be '*' (or left out: "site-a" means any service of site-a); a
destination is <namespace>/<service> of this site, where the service may be '*'. The most
specific intention wins; between an allow and a deny equally specific, the deny.`,
		Example: `  strait intention allow --from site-a/payments/web --to payments/api
  strait intention deny --from site-a --to payments/ledger
  strait intention check --from site-a/payments/web --to payments/api`,
	}
	set := func(action apipb.IntentionAction, verb string) *cobra.Command {
		var from, to, desc string
		c := &cobra.Command{
			Use:   verb,
			Short: verb + " connections from a source to a destination",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				req := &apipb.SetIntentionRequest{Intention: &apipb.Intention{Source: from, Destination: to, Action: action, Description: desc}}
				return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
					resp, err := cl.Intentions.Set(ctx, req)
					if err != nil {
						return err
					}
					for _, w := range resp.Warnings {
						fmt.Fprintf(g.stderr, "warning: %s\n", w)
					}
					if g.json {
						return g.printJSON(resp)
					}
					fmt.Fprintf(g.stdout, "%s %s -> %s\n", actionName(resp.Intention.Action), resp.Intention.Source, resp.Intention.Destination)
					return nil
				})
			},
		}
		c.Flags().StringVar(&from, "from", "", "source: <site>[/<namespace>[/<service>]], '*' for any namespace or service")
		c.Flags().StringVar(&to, "to", "", "destination: <namespace>/<service> of this site ('*' for any service)")
		c.Flags().StringVar(&desc, "description", "", "why")
		return c
	}
	var delFrom, delTo string
	del := actionCmd(g, &cobra.Command{
		Use:     "delete",
		Aliases: []string{"remove"},
		Short:   "Delete an intention",
		Args:    cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client, _ []string) error {
		_, err := cl.Intentions.Delete(ctx, &apipb.DeleteIntentionRequest{Source: delFrom, Destination: delTo})
		return err
	}, func([]string) string { return fmt.Sprintf("Deleted the intention %s -> %s", delFrom, delTo) })
	del.Flags().StringVar(&delFrom, "from", "", "source, as given when it was set")
	del.Flags().StringVar(&delTo, "to", "", "destination")
	list := listCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List intentions",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListIntentionsResponse, error) {
		return cl.Intentions.List(ctx, &apipb.ListIntentionsRequest{})
	}, (*apipb.ListIntentionsResponse).GetIntentions, []string{"SOURCE", "DESTINATION", "ACTION", "DESCRIPTION"}, func(in *apipb.Intention) []string {
		return []string{in.Source, in.Destination, actionName(in.Action), cmp.Or(in.Description, "-")}
	})
	var chkFrom, chkTo string
	check := &cobra.Command{
		Use:   "check",
		Short: "Say whether a source may connect to a destination, and which intention decides (exit 1 when denied)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Intentions.Check(ctx, &apipb.CheckIntentionRequest{Source: chkFrom, Destination: chkTo})
				if err != nil {
					return err
				}
				if g.json {
					if err := g.printJSON(resp); err != nil {
						return err
					}
				} else {
					verdict := "denied"
					if resp.Allowed {
						verdict = "allowed"
					}
					if resp.Matched == nil {
						fmt.Fprintf(g.stdout, "%s: no intention matches (default deny across sites)\n", verdict)
					} else {
						fmt.Fprintf(g.stdout, "%s by %s %s -> %s\n", verdict, actionName(resp.Matched.Action), resp.Matched.Source, resp.Matched.Destination)
					}
				}
				if !resp.Allowed {
					return errDenied
				}
				return nil
			})
		},
	}
	check.Flags().StringVar(&chkFrom, "from", "", "source: <site>/<namespace>/<service>")
	check.Flags().StringVar(&chkTo, "to", "", "destination: <namespace>/<service>")
	cmd.AddCommand(set(apipb.IntentionAction_INTENTION_ACTION_ALLOW, "allow"), set(apipb.IntentionAction_INTENTION_ACTION_DENY, "deny"), del, list, check)
	return cmd
}

// errDenied makes `intention check` exit 1 when the connection would be
// denied, so that scripts can test the verdict.
var errDenied = errors.New("denied: the intentions do not allow this connection")

func actionName(a apipb.IntentionAction) string {
	return lowerEnum(a.String(), "INTENTION_ACTION_")
}
