package cli

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/apiclient"
)

func newFederationCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "federation", Short: "Federate this site with other sites"}
	var peer string
	var ttl time.Duration
	tok := &cobra.Command{
		Use:   "token",
		Short: "Print a single-use token that lets another site federate with this one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &apipb.CreateInviteRequest{Peer: peer}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Federation.CreateInvite(ctx, req)
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				fmt.Fprintln(g.stdout, resp.Token)
				fmt.Fprintf(g.stderr, "Expires %s. On the other site: strait federation join <token>\n", resp.Expires.AsTime().Format(time.RFC3339))
				return nil
			})
		},
	}
	tok.Flags().StringVar(&peer, "peer", "", "name to give the joining site here (default: its site name)")
	tok.Flags().DurationVar(&ttl, "ttl", 0, "how long the token is valid (default 15m)")

	var name string
	join := &cobra.Command{
		Use:   "join TOKEN",
		Short: "Federate with the site that issued TOKEN",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Federation.Join(ctx, &apipb.JoinFederationRequest{Token: args[0], Name: name})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				p := resp.Peer
				fmt.Fprintf(g.stdout, "Federated with %s (site %s, trust domain %s)\n", p.Name, p.Site, p.TrustDomain)
				return nil
			})
		},
	}
	join.Flags().StringVar(&name, "name", "", "local name for the other site (default: its site name)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List peer sites",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				t := newTable(g.stdout, "NAME", "SITE", "TRUST DOMAIN", "ADDRESSES", "BUNDLE SEQ", "LAST CONTACT", "LAST ERROR")
				for _, p := range resp.Peers {
					last := "never"
					if p.Bundle.LastSuccess != nil {
						last = ago(time.Since(p.Bundle.LastSuccess.AsTime()))
					}
					t.row(p.Name, p.Site, p.TrustDomain, strings.Join(p.Addresses, ","), fmt.Sprint(p.Bundle.Sequence), last, cmp.Or(p.Bundle.LastError, "-"))
				}
				return t.flush()
			})
		},
	}
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Stop federating with a peer site (on this side)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				_, err := cl.Federation.Remove(ctx, &apipb.RemovePeeringRequest{Name: args[0]})
				return err
			})
		},
	}
	cmd.AddCommand(tok, join, list, remove)
	return cmd
}
