package cli

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/controlplane"
)

func newServerCmd(g *globals) *cobra.Command {
	var (
		configFile string
		dev        bool
		joinToken  string
		fc         FileConfig
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a control-plane server",
		Long: `Run a control-plane server of a site.

  strait server --dev                       one in-memory server, for trying Strait out
  strait server --site dc1 --data-dir D --bootstrap          the first server of a new site
  strait server --site dc1 --data-dir D --join ADDR --join-token @FILE   every other server

Settings come from --config (YAML; see README.md), overridden by flags.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			file := &FileConfig{}
			if configFile != "" {
				var err error
				if file, err = LoadConfigFile(configFile); err != nil {
					return err
				}
			}
			mergeFlags(cmd, file, &fc)
			if dev && !cmd.Flags().Changed("metrics-addr") && file.MetricsAddr == "" {
				file.MetricsAddr = "127.0.0.1:9400"
			}
			if dev && !cmd.Flags().Changed("dns-addr") && file.DNSAddr == "" {
				file.DNSAddr = "127.0.0.1:8600"
			}
			tok, err := readJoinToken(g, joinToken)
			if err != nil {
				return usageError{err}
			}
			cfg, err := file.serverConfig(dev, tok)
			if err != nil {
				return err
			}
			cfg.Logger = file.logger(g.stderr)
			if err := file.AWS.integrate(cmd.Context(), &cfg, file.Site); err != nil {
				return err
			}
			return runServer(cmd, g, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "config file (YAML)")
	f.BoolVar(&dev, "dev", false, "run one in-memory server on loopback with a fresh site")
	f.StringVar(&fc.Site, "site", "", "site name (a DNS label)")
	f.StringVar(&fc.TrustDomain, "trust-domain", "", "SPIFFE trust domain (default <site>.strait)")
	f.StringVar(&fc.NodeName, "node-name", "", "this server's name (default: host name)")
	f.StringVar(&fc.DataDir, "data-dir", "", "directory for the Raft log, snapshots and identity")
	f.StringVar(&fc.BindAddr, "bind-addr", "", "address for Raft and the API (default "+controlplane.DefaultBindAddr+")")
	f.StringVar(&fc.AdvertiseAddr, "advertise-addr", "", "address others reach this server at (default: bind address)")
	f.StringVar(&fc.MetricsAddr, "metrics-addr", "", "address for Prometheus /metrics (default: off; 127.0.0.1:9400 with --dev)")
	f.StringVar(&fc.DNSAddr, "dns-addr", "", "address for mesh DNS, UDP and TCP (default: off; 127.0.0.1:8600 with --dev)")
	f.StringVar(&fc.BundleAddr, "bundle-addr", "", "address for the SPIFFE bundle endpoint, HTTPS (default: off)")
	f.StringVar(&fc.VirtualIPCIDR, "virtual-ip-cidr", "", "where imported services' virtual IPs come from (default "+controlplane.DefaultVirtualIPCIDR+"; with --dev, a 127.x.0.0/16 derived from the site name)")
	f.BoolVar(&fc.Bootstrap, "bootstrap", false, "create the site (first server, first start only)")
	f.StringSliceVar(&fc.Join, "join", nil, "addresses of existing servers to join (first start only)")
	f.StringArrayVar(&fc.RetryJoin, "retry-join", nil, "servers to join, retried until admitted: an address or \"provider=aws tag_key=K tag_value=V\" (repeatable)")
	f.StringVar(&joinToken, "join-token", "", "server "+joinTokenHelp)
	f.StringVar(&fc.KEKFile, "kek-file", "", "key-encryption key file for the CA key (default <data-dir>/kek)")
	f.BoolVar(&fc.LeaveOnTerminate, "leave-on-terminate", false, "leave the site's Raft configuration on shutdown")
	f.StringVar(&fc.LogLevel, "log-level", "", "debug, info, warn or error")
	f.StringVar(&fc.LogFormat, "log-format", "", "text or json")
	return cmd
}

// mergeFlags copies the flags the user set over the file's values.
func mergeFlags(cmd *cobra.Command, file, flags *FileConfig) {
	set := cmd.Flags().Changed
	str := func(name string, dst *string, v string) {
		if set(name) {
			*dst = v
		}
	}
	str("site", &file.Site, flags.Site)
	str("trust-domain", &file.TrustDomain, flags.TrustDomain)
	str("node-name", &file.NodeName, flags.NodeName)
	str("data-dir", &file.DataDir, flags.DataDir)
	str("bind-addr", &file.BindAddr, flags.BindAddr)
	str("advertise-addr", &file.AdvertiseAddr, flags.AdvertiseAddr)
	str("metrics-addr", &file.MetricsAddr, flags.MetricsAddr)
	str("bundle-addr", &file.BundleAddr, flags.BundleAddr)
	str("dns-addr", &file.DNSAddr, flags.DNSAddr)
	str("virtual-ip-cidr", &file.VirtualIPCIDR, flags.VirtualIPCIDR)
	str("kek-file", &file.KEKFile, flags.KEKFile)
	str("log-level", &file.LogLevel, flags.LogLevel)
	str("log-format", &file.LogFormat, flags.LogFormat)
	if set("bootstrap") {
		file.Bootstrap = flags.Bootstrap
	}
	if set("join") {
		file.Join = flags.Join
	}
	if set("retry-join") {
		file.RetryJoin = flags.RetryJoin
	}
	if set("leave-on-terminate") {
		file.LeaveOnTerminate = flags.LeaveOnTerminate
	}
}

func runServer(cmd *cobra.Command, g *globals, cfg controlplane.Config) error {
	var srv *controlplane.Server
	var ctxPath atomic.Pointer[string]
	cfg.OnBootstrap = func(token string) {
		if cfg.Dev {
			dc := &devContext{Addr: srv.Addr(), Token: token, CA: string(encodeBundle(srv)), Site: srv.Site()}
			path, err := writeDevContext(dc)
			if err != nil {
				fmt.Fprintf(g.stderr, "warning: could not write the dev context (%v); use --addr, --token and --ca-file\n", err)
				path = ""
			} else {
				ctxPath.Store(&path)
			}
			printDevBanner(g, srv, token, path, cfg.MetricsAddr, cfg.DNSAddr)
			return
		}
		fmt.Fprintf(g.stdout, "Site bootstrapped. Initial management token (shown once, store it safely):\n\n  %s\n\n", token)
		fmt.Fprintf(g.stdout, "CLI access:\n  export STRAIT_ADDR=%s STRAIT_CA_FILE=%s STRAIT_TOKEN=<the token above>\n", srv.Addr(), controlplane.CAFile(cfg.DataDir))
	}
	var err error
	if srv, err = controlplane.New(cfg); err != nil {
		return err
	}
	defer func() {
		if p := ctxPath.Load(); p != nil {
			removeDevContext(*p, srv.Addr())
		}
	}()
	return srv.Run(cmd.Context())
}

func encodeBundle(srv *controlplane.Server) []byte {
	var b strings.Builder
	for _, c := range srv.Bundle().X509Authorities() {
		b.WriteString(pemCert(c.Raw))
	}
	return []byte(b.String())
}

func printDevBanner(g *globals, srv *controlplane.Server, token, ctxPath, metrics, dnsAddr string) {
	w := g.stdout
	self := selfCommand()
	fmt.Fprintf(w, "\nStrait dev server running: site %q, trust domain %s\n", srv.Site(), srv.TrustDomain().Name())
	fmt.Fprintf(w, "  API (mTLS):  %s\n", srv.Addr())
	if metrics != "" {
		fmt.Fprintf(w, "  Metrics:     http://%s/metrics\n", metrics)
	}
	if dnsAddr != "" {
		fmt.Fprintf(w, "  Mesh DNS:    %s\n", dnsAddr)
	}
	fmt.Fprintf(w, "  Token:       %s\n", token)
	if ctxPath != "" {
		fmt.Fprintf(w, "  (CLI commands in other terminals find this server through %s)\n", ctxPath)
	}
	fmt.Fprintf(w, "\nTry:\n")
	fmt.Fprintf(w, "  %s service register --ns payments --svc api --port http=8080/http --address 127.0.0.1 --id api-1\n", self)
	fmt.Fprintf(w, "  %s service list\n", self)
	if digHost, digPort, err := net.SplitHostPort(dnsAddr); err == nil {
		fmt.Fprintf(w, "  dig @%s -p %s api.payments.%s.mesh\n", digHost, digPort, srv.Site())
	}
	fmt.Fprintf(w, "  %s status\n\nCtrl-C stops the server; nothing is left on disk.\n\n", self)
}
