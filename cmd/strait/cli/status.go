package cli

import (
	"cmp"
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/apiclient"
)

func newStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the connected server's view of its site: leader, term, indexes, peers, health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				st, err := cl.Operator.Status(ctx, &apipb.StatusRequest{})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(st)
				}
				health := "healthy"
				if !st.Healthy {
					health = "UNHEALTHY"
				}
				w := g.stdout
				fmt.Fprintf(w, "Site:          %s (trust domain %s)\n", st.Site, st.TrustDomain)
				fmt.Fprintf(w, "Server:        %s, %s, %s\n", st.NodeId, st.State, health)
				fmt.Fprintf(w, "Leader:        %s %s\n", cmp.Or(st.LeaderId, "(none)"), st.LeaderAddress)
				fmt.Fprintf(w, "Term:          %d\n", st.Term)
				fmt.Fprintf(w, "Commit index:  %d (applied %d)\n", st.CommitIndex, st.AppliedIndex)
				fmt.Fprintf(w, "Last contact:  %s\n", ago(st.LastContact.AsDuration()))
				fmt.Fprintf(w, "Catalog:       %d services, %d instances\n", st.Services, st.Instances)
				fmt.Fprintf(w, "Version:       %s\n\nPeers:\n", st.Version)
				t := newTable(w, "  NODE", "ADDRESS", "STATE", "VOTER")
				for _, p := range st.Peers {
					state := "follower"
					if p.Leader {
						state = "leader"
					}
					t.row("  "+p.Id, p.Address, state, fmt.Sprint(p.Voter))
				}
				return t.flush()
			})
		},
	}
}
