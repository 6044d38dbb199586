package cli

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
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

	list := listCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List peer sites and the state of replication with each",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListPeersFedResponse, error) {
		return cl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
	}, (*apipb.ListPeersFedResponse).GetPeers, []string{"NAME", "SITE", "STATE", "LAST CONTACT", "IMPORTED", "EXPORTED", "LAG", "BUNDLE SEQ"}, func(p *apipb.Peer) []string {
		return []string{p.Name, p.Site, peerState(p), contactAgo(p.Imports), fmt.Sprintf("%d svc/%d inst", p.Imports.GetServices(), p.Imports.GetInstances()),
			fmt.Sprintf("%d svc", p.Exports.GetServices()), exportLag(p.Exports), fmt.Sprint(p.Bundle.GetSequence())}
	})
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one peer site in detail",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Federation.List(ctx, &apipb.ListPeersFedRequest{Name: args[0]})
				if err != nil {
					return err
				}
				p := resp.Peers[0]
				if g.json {
					return g.printJSON(p)
				}
				im, ex, b := p.Imports, p.Exports, p.Bundle
				w := g.stdout
				fmt.Fprintf(w, "Peer %s: site %s, trust domain %s\n", p.Name, p.Site, p.TrustDomain)
				fmt.Fprintf(w, "  state           %s\n", peerState(p))
				fmt.Fprintf(w, "  last contact    %s\n", contactAgo(im))
				fmt.Fprintf(w, "  servers         %s\n", strings.Join(p.Addresses, ", "))
				fmt.Fprintf(w, "  gateways        %s\n", cmp.Or(strings.Join(im.GetGateways(), ", "), "none announced"))
				fmt.Fprintf(w, "Imports (from %s)\n", p.Name)
				fmt.Fprintf(w, "  stream          %s\n", streamState(im.GetConnected(), im.GetLastError()))
				fmt.Fprintf(w, "  services        %d (%d instances)\n", im.GetServices(), im.GetInstances())
				fmt.Fprintf(w, "  version         %d\n", im.GetVersion())
				fmt.Fprintf(w, "Exports (to %s)\n", p.Name)
				fmt.Fprintf(w, "  stream          %s\n", streamState(ex.GetConnected(), ""))
				fmt.Fprintf(w, "  services        %d\n", ex.GetServices())
				fmt.Fprintf(w, "  sent / acked    %d / %d\n", ex.GetSentVersion(), ex.GetAckedVersion())
				fmt.Fprintf(w, "  lag             %s\n", exportLag(ex))
				fmt.Fprintf(w, "  bytes sent      %d\n", ex.GetBytesSent())
				fmt.Fprintf(w, "Bundle\n")
				fmt.Fprintf(w, "  sequence        %d\n", b.GetSequence())
				fmt.Fprintf(w, "  endpoint        %s (%s)\n", b.GetEndpointUrl(), b.GetProfile())
				fmt.Fprintf(w, "  authorities     %d X.509, %d JWT\n", b.GetX509Authorities(), b.GetJwtAuthorities())
				if b.GetLastError() != "" {
					fmt.Fprintf(w, "  last error      %s\n", b.GetLastError())
				}
				return nil
			})
		},
	}
	del := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"remove"},
		Short:   "Stop federating with a peer site (both sides drop the peering)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Federation.Remove(ctx, &apipb.RemovePeeringRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				fmt.Fprintf(g.stdout, "Stopped federating with %s\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(tok, join, list, show, del)
	return cmd
}

func peerState(p *apipb.Peer) string {
	return lowerEnum(p.Imports.GetState().String(), "PEER_STATE_")
}

func contactAgo(im *apipb.ImportStatus) string {
	if im.GetLastContact() == nil {
		return "never"
	}
	return ago(time.Since(im.LastContact.AsTime()))
}

func exportLag(ex *apipb.ExportStatus) string {
	if !ex.GetConnected() {
		return "-"
	}
	return ex.GetLag().AsDuration().Round(time.Millisecond).String()
}

func streamState(connected bool, lastErr string) string {
	switch {
	case connected:
		return "connected"
	case lastErr != "":
		return "down: " + lastErr
	}
	return "down (or this server cannot see it: ask the leader)"
}
