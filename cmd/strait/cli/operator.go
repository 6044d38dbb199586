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
	rc.AddCommand(listCmd(g, &cobra.Command{
		Use:        "list-peers",
		Short:      "List the servers in the Raft configuration",
		SuggestFor: []string{"peers", "list"},
		Args:       cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListPeersResponse, error) {
		return cl.Operator.ListPeers(ctx, &apipb.ListPeersRequest{})
	}, (*apipb.ListPeersResponse).GetPeers, []string{"NODE", "ADDRESS", "STATE", "VOTER"}, func(p *apipb.RaftPeer) []string {
		st := "follower"
		if p.Leader {
			st = "leader"
		}
		return []string{p.Id, p.Address, st, fmt.Sprint(p.Voter)}
	}), actionCmd(g, &cobra.Command{
		Use:   "remove-peer NODE",
		Short: "Remove a server (a dead one, or one being retired) from the Raft configuration",
		Args:  cobra.ExactArgs(1),
	}, func(ctx context.Context, cl *apiclient.Client, args []string) error {
		_, err := cl.Operator.RemovePeer(ctx, &apipb.RemovePeerRequest{Id: args[0]})
		return err
	}, func(args []string) string { return "Removed server " + args[0] + " from the Raft configuration" }))
	op.AddCommand(rc)
	return op
}
