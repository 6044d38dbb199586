package cli

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

func newBundleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bundle", Short: "This site's trust bundle, and other trust domains' bundles"}
	var out string
	show := &cobra.Command{
		Use:   "show",
		Short: "Print this site's SPIFFE bundle document (give it to a site that federates with this one)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Bundle.GetBundle(ctx, &apipb.GetBundleRequest{})
				if err != nil {
					return err
				}
				if out != "" {
					if err := os.WriteFile(out, resp.Bundle, 0o644); err != nil {
						return err
					}
					fmt.Fprintf(g.stderr, "Wrote the bundle to %s\n", out)
					return nil
				}
				_, err = fmt.Fprintln(g.stdout, string(resp.Bundle))
				return err
			})
		},
	}
	show.Flags().StringVarP(&out, "output", "o", "", "write to this file instead of stdout")

	var td, url, endpointID, bundleFile string
	federate := &cobra.Command{
		Use:   "federate",
		Short: "Trust another trust domain's bundle, fetched and refreshed from its bundle endpoint",
		Example: `  # https_spiffe: pin the other domain's bundle (from 'strait bundle show' there)
  strait bundle federate --trust-domain gcp-west.strait --url https://10.1.0.5:8443/ \
      --endpoint-id spiffe://gcp-west.strait/strait/bundle-endpoint --bundle-file gcp-west.json
  # https_web: the endpoint has a Web PKI certificate
  strait bundle federate --trust-domain partner.example --url https://partner.example/bundle`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &apipb.SetForeignRequest{TrustDomain: td, EndpointUrl: url, EndpointSpiffeId: endpointID}
			if bundleFile != "" {
				b, err := os.ReadFile(bundleFile)
				if err != nil {
					return err
				}
				req.Bundle = b
			}
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Bundle.SetForeign(ctx, req)
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				fmt.Fprintf(g.stdout, "Federated with %s (%s, sequence %d)\n", resp.Status.TrustDomain, resp.Status.Profile, resp.Status.Sequence)
				return nil
			})
		},
	}
	f := federate.Flags()
	f.StringVar(&td, "trust-domain", "", "the other trust domain")
	f.StringVar(&url, "url", "", "its bundle endpoint (https)")
	f.StringVar(&endpointID, "endpoint-id", "", "the endpoint's SPIFFE ID (https_spiffe); omit for https_web")
	f.StringVar(&bundleFile, "bundle-file", "", "its bundle document (required for https_spiffe)")

	list := listCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List other trust domains' bundles and their refresh status",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListForeignResponse, error) {
		return cl.Bundle.ListForeign(ctx, &apipb.ListForeignRequest{})
	}, (*apipb.ListForeignResponse).GetBundles, []string{"TRUST DOMAIN", "PROFILE", "SEQUENCE", "ROOTS", "LAST SUCCESS", "LAST ERROR"}, func(b *apipb.ForeignBundleStatus) []string {
		ok := "never"
		if b.LastSuccess != nil {
			ok = ago(time.Since(b.LastSuccess.AsTime()))
		}
		return []string{b.TrustDomain, b.Profile, fmt.Sprint(b.Sequence), fmt.Sprint(b.X509Authorities), ok, cmp.Or(b.LastError, "-")}
	})
	remove := actionCmd(g, &cobra.Command{
		Use:     "delete TRUST_DOMAIN",
		Aliases: []string{"remove"},
		Short:   "Stop trusting another trust domain (a peer's: use `strait federation delete`)",
		Args:    cobra.ExactArgs(1),
	}, func(ctx context.Context, cl *apiclient.Client, args []string) error {
		_, err := cl.Bundle.RemoveForeign(ctx, &apipb.RemoveForeignRequest{TrustDomain: args[0]})
		return err
	}, func(args []string) string { return "Stopped trusting " + args[0] })
	cmd.AddCommand(show, federate, list, remove)
	return cmd
}
