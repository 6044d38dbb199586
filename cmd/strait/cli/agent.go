package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/agent"
	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// DefaultSocket is where agents serve the Workload API unless told otherwise.
const DefaultSocket = "/run/strait/agent.sock"

func newAgentCmd(g *globals) *cobra.Command {
	var (
		cfg       agent.Config
		logLevel  string
		logFormat string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent on a workload host: serves the SPIFFE Workload API",
		Long: `Run the agent on a workload host. On its first start it joins the site with an
agent token; afterwards its identity is in --data-dir. Local processes get their
SVIDs from the Workload API socket (export SPIFFE_ENDPOINT_SOCKET=unix://<socket>).

  strait agent --node-name web-1 --server 10.0.1.5:7400 --data-dir /var/lib/strait-agent \
      --join-token @/etc/strait/agent-token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cfg.JoinToken, err = readJoinToken(g, cfg.JoinToken); err != nil {
				return usageError{err}
			}
			if cfg.Node == "" {
				h, err := os.Hostname()
				if err != nil {
					return err
				}
				cfg.Node = h
			}
			fc := FileConfig{LogLevel: logLevel, LogFormat: logFormat}
			if _, err := parseLogLevel(logLevel); err != nil {
				return usageError{err}
			}
			cfg.Logger = fc.logger(g.stderr)
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Node, "node-name", "", "this agent's name, a DNS label (default: host name)")
	f.StringSliceVar(&cfg.Servers, "server", nil, "addresses of the site's servers (repeatable)")
	f.StringVar(&cfg.JoinToken, "join-token", "", "agent "+joinTokenHelp)
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the agent's identity")
	f.StringVar(&cfg.SocketPath, "socket", DefaultSocket, "Workload API unix socket")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "address for Prometheus /metrics (default: off)")
	f.StringVar(&logLevel, "log-level", "", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "", "text or json")
	cmd.AddCommand(listCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List the agents that joined this site",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListAgentsResponse, error) {
		return cl.Workload.ListAgents(ctx, &apipb.ListAgentsRequest{})
	}, (*apipb.ListAgentsResponse).GetAgents, []string{"NODE", "JOINED", "TOKEN", "REVOKED"}, func(a *apipb.Agent) []string {
		return []string{a.Node, a.Joined.AsTime().Format(time.RFC3339), a.TokenAccessor, fmt.Sprint(a.Revoked)}
	}), actionCmd(g, &cobra.Command{
		Use:   "revoke NODE",
		Short: "Revoke an agent: servers refuse its SVID at once; it must rejoin with a new token",
		Args:  cobra.ExactArgs(1),
	}, func(ctx context.Context, cl *apiclient.Client, args []string) error {
		_, err := cl.Workload.RevokeAgent(ctx, &apipb.RevokeAgentRequest{Node: args[0]})
		return err
	}, func(args []string) string { return "Revoked agent " + args[0] }))
	return cmd
}
