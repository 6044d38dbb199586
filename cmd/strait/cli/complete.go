package cli

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// Shell completion (`strait completion bash|zsh|fish|powershell`) completes
// commands and flags, and names from the site: peers, namespaces, services,
// and what the revoke and delete verbs take. It asks the server the
// command would talk to (the same flags, environment and dev context) and
// completes nothing, silently, when none answers within completeTimeout.

// completeTimeout bounds one completion's call to the server, so that a tab
// press never hangs.
const completeTimeout = 2 * time.Second

// lister lists names from the site for a completion; cmd is the command
// being completed, for flags already typed.
type lister func(ctx context.Context, cl *apiclient.Client, cmd *cobra.Command) ([]string, error)

// completeFrom is a completion function listing names with f. With
// positional set, it completes only the first argument.
func (g *globals) completeFrom(f lister, positional bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if positional && len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		cfg, err := g.clientConfig()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		cl, err := apiclient.Dial(cfg)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		defer cl.Close()
		parent := cmd.Context()
		if parent == nil {
			parent = context.Background()
		}
		ctx, cancel := context.WithTimeout(parent, completeTimeout)
		defer cancel()
		names, err := f(ctx, cl, cmd)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, n := range names {
			if strings.HasPrefix(n, toComplete) && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
		slices.Sort(out)
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// listPeerSites are the peers' site names, which intentions' sources use.
func listPeerSites(ctx context.Context, cl *apiclient.Client, _ *cobra.Command) ([]string, error) {
	resp, err := cl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range resp.Peers {
		out = append(out, p.Site)
	}
	return out, nil
}

func listPeers(ctx context.Context, cl *apiclient.Client, _ *cobra.Command) ([]string, error) {
	resp, err := cl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range resp.Peers {
		out = append(out, p.Name)
	}
	return out, nil
}

// localServices are the services of this site (not imports), in the
// namespace given with --ns when there is one.
func localServices(ctx context.Context, cl *apiclient.Client, cmd *cobra.Command) ([]*apipb.Service, error) {
	ns, _ := cmd.Flags().GetString("ns")
	resp, err := cl.Catalog.ListServices(ctx, &apipb.ListServicesRequest{Namespace: ns})
	if err != nil {
		return nil, err
	}
	var out []*apipb.Service
	for _, s := range resp.Services {
		if s.Service.GetPeer() == "" {
			out = append(out, s.Service)
		}
	}
	return out, nil
}

func listNamespaces(ctx context.Context, cl *apiclient.Client, cmd *cobra.Command) ([]string, error) {
	resp, err := cl.Catalog.ListServices(ctx, &apipb.ListServicesRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range resp.Services {
		out = append(out, s.Service.Namespace)
	}
	return out, nil
}

func listServices(ctx context.Context, cl *apiclient.Client, cmd *cobra.Command) ([]string, error) {
	svcs, err := localServices(ctx, cl, cmd)
	var out []string
	for _, s := range svcs {
		out = append(out, s.Name)
	}
	return out, err
}

// listDestinations are NS/SVC of this site's services, for intentions.
func listDestinations(ctx context.Context, cl *apiclient.Client, cmd *cobra.Command) ([]string, error) {
	svcs, err := localServices(ctx, cl, cmd)
	var out []string
	for _, s := range svcs {
		out = append(out, s.Namespace+"/"+s.Name, s.Namespace+"/*")
	}
	return out, err
}

func listTokens(ctx context.Context, cl *apiclient.Client, _ *cobra.Command) ([]string, error) {
	resp, err := cl.ACL.ListTokens(ctx, &apipb.ListTokensRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range resp.Tokens {
		out = append(out, t.AccessorId)
	}
	return out, nil
}

func listAgents(ctx context.Context, cl *apiclient.Client, _ *cobra.Command) ([]string, error) {
	resp, err := cl.Workload.ListAgents(ctx, &apipb.ListAgentsRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range resp.Agents {
		out = append(out, a.Node)
	}
	return out, nil
}

func listGateways(ctx context.Context, cl *apiclient.Client, _ *cobra.Command) ([]string, error) {
	resp, err := cl.Gateway.List(ctx, &apipb.ListGatewaysRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, gw := range resp.Gateways {
		out = append(out, gw.Name)
	}
	return out, nil
}

func listEntries(ctx context.Context, cl *apiclient.Client, _ *cobra.Command) ([]string, error) {
	resp, err := cl.Workload.ListEntries(ctx, &apipb.ListEntriesRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range resp.Entries {
		out = append(out, e.Id)
	}
	return out, nil
}

func listForeign(ctx context.Context, cl *apiclient.Client, _ *cobra.Command) ([]string, error) {
	resp, err := cl.Bundle.ListForeign(ctx, &apipb.ListForeignRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, b := range resp.Bundles {
		out = append(out, b.TrustDomain)
	}
	return out, nil
}

func listRaftPeers(ctx context.Context, cl *apiclient.Client, _ *cobra.Command) ([]string, error) {
	resp, err := cl.Operator.ListPeers(ctx, &apipb.ListPeersRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range resp.Peers {
		out = append(out, p.Id)
	}
	return out, nil
}

// registerCompletions attaches the dynamic completions to the built tree,
// by command path, so that each command's file stays about its command.
func (g *globals) registerCompletions(root *cobra.Command) {
	flag := func(path, name string, f lister) {
		c, _, err := root.Find(strings.Fields(path))
		if err != nil || c.Flags().Lookup(name) == nil {
			panic("completion for a flag that does not exist: " + path + " --" + name)
		}
		_ = c.RegisterFlagCompletionFunc(name, g.completeFrom(f, false))
	}
	arg := func(path string, f lister) {
		c, _, err := root.Find(strings.Fields(path))
		if err != nil || c.CommandPath() != "strait "+path {
			panic("completion for a command that does not exist: " + path)
		}
		c.ValidArgsFunction = g.completeFrom(f, true)
	}
	for _, path := range []string{"service register", "service deregister", "service show", "service heartbeat", "export", "unexport", "workload register"} {
		flag(path, "ns", listNamespaces)
		flag(path, "svc", listServices)
		flag(path, "name", listServices)
	}
	flag("service list", "ns", listNamespaces)
	flag("service show", "peer", listPeers)
	flag("export", "to", listPeers)
	flag("unexport", "from", listPeers)
	for _, path := range []string{"intention allow", "intention deny", "intention delete", "intention check"} {
		flag(path, "from", listPeerSites)
		flag(path, "to", listDestinations)
	}
	arg("federation show", listPeers)
	arg("federation delete", listPeers)
	arg("token revoke", listTokens)
	arg("agent revoke", listAgents)
	arg("gateway revoke", listGateways)
	arg("workload delete", listEntries)
	arg("bundle delete", listForeign)
	arg("operator raft remove-peer", listRaftPeers)
	kinds := []cobra.Completion{"management", "write", "read", "server", "agent", "gateway"}
	if c, _, err := root.Find([]string{"token", "create"}); err == nil {
		_ = c.RegisterFlagCompletionFunc("kind", cobra.FixedCompletions(kinds, cobra.ShellCompDirectiveNoFileComp))
	}
}
