package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

func newWorkloadCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "workload", Short: "Register which processes get which identity"}
	cmd.AddCommand(newWorkloadRegisterCmd(g), newWorkloadListCmd(g), newWorkloadDeleteCmd(g), newWorkloadGRPCFilesCmd(g), newWorkloadSVIDCmd(g))
	return cmd
}

// parseSelector parses type:key:value (unix:uid:1001, unix:path:/usr/bin/api).
func parseSelector(s string) (*apipb.Selector, error) {
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("--selector %q: want type:key:value, such as unix:uid:1001", s)
	}
	return &apipb.Selector{Type: parts[0], Key: parts[1], Value: parts[2]}, nil
}

func newWorkloadRegisterCmd(g *globals) *cobra.Command {
	var (
		ns, svc, agentNode string
		selectors          []string
		ttl                time.Duration
	)
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Give processes matching the selectors the identity spiffe://<td>/ns/NS/svc/SVC",
		Example: `  strait workload register --ns payments --svc api --agent web-1 --selector unix:uid:1001
  strait workload register --ns payments --svc api --agent '*' --selector unix:path:/usr/local/bin/api`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			e := &apipb.WorkloadEntry{Namespace: ns, Service: svc, Agent: agentNode}
			for _, s := range selectors {
				sel, err := parseSelector(s)
				if err != nil {
					return usageError{err}
				}
				e.Selectors = append(e.Selectors, sel)
			}
			if ttl > 0 {
				e.SvidTtl = durationpb.New(ttl)
			}
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Workload.CreateEntry(ctx, &apipb.CreateEntryRequest{Entry: e})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				fmt.Fprintf(g.stdout, "Registered entry %s: %s/%s on agent %s\n", resp.Entry.Id, resp.Entry.Namespace, resp.Entry.Service, resp.Entry.Agent)
				return nil
			})
		},
	}
	f := cmd.Flags()
	svcFlags(f, &ns, &svc)
	f.StringVar(&agentNode, "agent", "", "agent (node name) allowed to issue it, or '*' for every agent")
	f.StringArrayVar(&selectors, "selector", nil, "type:key:value that the process must match; repeatable (all must match)")
	f.DurationVar(&ttl, "svid-ttl", 0, "SVID lifetime (default: the site's, 1h)")
	return cmd
}

func newWorkloadListCmd(g *globals) *cobra.Command {
	return listCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List workload entries",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListEntriesResponse, error) {
		return cl.Workload.ListEntries(ctx, &apipb.ListEntriesRequest{})
	}, (*apipb.ListEntriesResponse).GetEntries, []string{"ID", "NAMESPACE", "SERVICE", "AGENT", "SELECTORS"}, func(e *apipb.WorkloadEntry) []string {
		var sels []string
		for _, s := range e.Selectors {
			sels = append(sels, s.Type+":"+s.Key+":"+s.Value)
		}
		return []string{e.Id, e.Namespace, e.Service, e.Agent, strings.Join(sels, ",")}
	})
}

func newWorkloadDeleteCmd(g *globals) *cobra.Command {
	return actionCmd(g, &cobra.Command{
		Use:     "delete ID",
		Aliases: []string{"remove"},
		Short:   "Delete a workload entry; its SVIDs are no longer renewed",
		Args:    cobra.ExactArgs(1),
	}, func(ctx context.Context, cl *apiclient.Client, args []string) error {
		_, err := cl.Workload.DeleteEntry(ctx, &apipb.DeleteEntryRequest{Id: args[0]})
		return err
	}, func(args []string) string { return "Deleted workload entry " + args[0] })
}
