package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/cloud/aws"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/gateway"
)

func newGatewayCmd(g *globals) *cobra.Command {
	var (
		cfg       gateway.Config
		logLevel  string
		logFormat string
		awsRegion string
	)
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run a mesh gateway: the only way in and out of a site",
		Long: `Run a mesh gateway. On its first start it joins the site with a gateway token;
afterwards its identity is in --data-dir. Its configuration comes from the site's servers
over xDS: it listens on the virtual IPs of imported services (egress), carries connections to
peers' gateways over multiplexed mTLS tunnels, and admits peers' connections on --wan-addr
(ingress) as the intentions allow.

  strait gateway --name gw-1 --server 10.0.1.5:7400 --data-dir /var/lib/strait-gateway \
      --wan-addr 0.0.0.0:8443 --advertise-wan 203.0.113.7:8443 --join-token @/etc/strait/gateway-token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cfg.JoinToken, err = readJoinToken(g, cfg.JoinToken); err != nil {
				return usageError{err}
			}
			if cfg.Name == "" {
				h, err := os.Hostname()
				if err != nil {
					return err
				}
				cfg.Name = h
			}
			if _, err = parseLogLevel(logLevel); err != nil {
				return usageError{err}
			}
			cfg.Logger = (&FileConfig{LogLevel: logLevel, LogFormat: logFormat}).logger(g.stderr)
			if cfg.Servers, err = resolveServers(cmd.Context(), cfg.Servers, aws.Config{Region: awsRegion}, cfg.Logger.Warn); err != nil {
				return usageError{err}
			}
			gw, err := gateway.New(cfg)
			if err != nil {
				return usageError{err}
			}
			return gw.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", "", "this gateway's name, a DNS label (default: host name)")
	f.StringSliceVar(&cfg.Servers, "server", nil, "a server of the site: an address, or \"provider=aws tag_key=K tag_value=V\" to find them from EC2 tags (repeatable)")
	f.StringVar(&awsRegion, "aws-region", "", "AWS region for --server discovery (default: AWS_REGION or the shared config)")
	f.StringVar(&cfg.JoinToken, "join-token", "", "gateway "+joinTokenHelp)
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the gateway's identity")
	f.StringVar(&cfg.WANAddr, "wan-addr", "0.0.0.0:8443", "address peers' gateways connect to")
	f.StringVar(&cfg.AdvertiseWAN, "advertise-wan", "", "address announced to peers (default: --wan-addr)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "address for Prometheus /metrics (default: off)")
	f.IntVar(&cfg.WANMaxConnections, "wan-max-connections", gateway.DefaultWANMaxConnections, "connections open on --wan-addr at most (peers' tunnels, passthrough to the servers); more are closed at once")
	f.IntVar(&cfg.WANMaxConnectionsPerSource, "wan-max-connections-per-source", 0, "connections open on --wan-addr from one IP address at most (default: 128, or --wan-max-connections if lower)")
	f.DurationVar(&cfg.PassthroughIdleTimeout, "passthrough-idle-timeout", gateway.DefaultPassthroughIdleTimeout, "close a connection passed through to the site's servers after this long with no byte either way")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", 10*time.Second, "how long connections may finish at shutdown")
	f.DurationVar(&cfg.RenewCheck, "renew-check", time.Minute, "how often the SVID is checked for renewal (half-life, or a new CA root)")
	f.IntVar(&cfg.TunnelsPerPeer, "tunnels-per-peer", 0, "TLS connections kept to each peer gateway, streams spread over them (default: one per CPU, at most 4)")
	f.IntVar(&cfg.MaxStreamsPerTunnel, "max-streams-per-tunnel", gateway.DefaultMaxStreamsPerTunnel, "most streams a peer gateway may have open at once on one tunnel; more are reset and counted")
	f.IntVar(&cfg.MaxStreamsPerPeer, "max-streams-per-peer", gateway.DefaultMaxStreamsPerPeer, "most streams served at once for one peer site (all its gateways and tunnels); more are reset and counted")
	f.IntVar(&cfg.TunnelBufferMiB, "tunnel-buffer-mib", gateway.DefaultTunnelBufferMiB, "most MiB received on tunnels and not yet passed on, across all streams; beyond it the stream holding the most is reset")
	f.IntVar(&cfg.MaxEgressListeners, "max-egress-listeners", gateway.DefaultMaxEgressListeners, "most egress listeners (imported services' ports) opened; the rest are logged once and counted")
	f.BoolVar(&cfg.AccessLog, "access-log", false, "log every connection served, at info (refusals and failures are logged whatever this says)")
	f.StringVar(&logLevel, "log-level", "", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "", "text or json")
	cmd.AddCommand(listCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List the gateways that joined this site",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListGatewaysResponse, error) {
		return cl.Gateway.List(ctx, &apipb.ListGatewaysRequest{})
	}, (*apipb.ListGatewaysResponse).GetGateways, []string{"NAME", "JOINED", "TOKEN", "REVOKED"}, func(gw *apipb.GatewayRecord) []string {
		return []string{gw.Name, gw.Joined.AsTime().Format(time.RFC3339), gw.TokenAccessor, fmt.Sprint(gw.Revoked)}
	}), actionCmd(g, &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a gateway: every server refuses its SVID from now on",
		Args:  cobra.ExactArgs(1),
	}, func(ctx context.Context, cl *apiclient.Client, args []string) error {
		_, err := cl.Gateway.Revoke(ctx, &apipb.RevokeGatewayRequest{Name: args[0]})
		return err
	}, func(args []string) string { return "Revoked gateway " + args[0] }))
	return cmd
}
