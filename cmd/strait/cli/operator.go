package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

func newOperatorCmd(g *globals) *cobra.Command {
	op := &cobra.Command{Use: "operator", Short: "Operate a site's servers"}
	rc := &cobra.Command{Use: "raft", Short: "Inspect and change the Raft configuration"}
	rc.AddCommand(&cobra.Command{
		Use:        "list-peers",
		Short:      "List the servers in the Raft configuration",
		SuggestFor: []string{"peers", "list"},
		Args:       cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Operator.ListPeers(ctx, &apipb.ListPeersRequest{})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				t := newTable(g.stdout, "NODE", "ADDRESS", "STATE", "VOTER")
				for _, p := range resp.Peers {
					st := "follower"
					if p.Leader {
						st = "leader"
					}
					t.row(p.Id, p.Address, st, fmt.Sprint(p.Voter))
				}
				return t.flush()
			})
		},
	}, &cobra.Command{
		Use:   "remove-peer NODE",
		Short: "Remove a server (a dead one, or one being retired) from the Raft configuration",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				if _, err := cl.Operator.RemovePeer(ctx, &apipb.RemovePeerRequest{Id: args[0]}); err != nil {
					return err
				}
				if !g.json {
					fmt.Fprintf(g.stdout, "Removed server %s from the Raft configuration\n", args[0])
				}
				return nil
			})
		},
	})
	op.AddCommand(rc)
	return op
}
