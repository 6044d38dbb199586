package cli

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/straitmesh/strait/demo"
)

func newDemoCmd(g *globals) *cobra.Command {
	var sites int
	var logLevel string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run federated sites on this machine and show them talking through their gateways",
		Long: `Start, on this machine alone, two sites (three servers each, a gateway each, mesh DNS),
federated with a join token, each with a sample HTTP service exported to the other, and print
what to type to see it work. Ctrl-C stops everything and removes every file it made.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if sites < 2 || sites > len(demo.SiteNames) {
				return usageError{fmt.Errorf("--sites %d: 2 or 3", sites)}
			}
			ctx := cmd.Context()
			fmt.Fprintf(g.stderr, "Starting %d sites (3 servers, a gateway and DNS each); this takes a few seconds...\n", sites)
			opts := demo.Options{Sites: sites}
			if logLevel != "" {
				if _, err := parseLogLevel(logLevel); err != nil {
					return usageError{err}
				}
				opts.Logger = (&FileConfig{LogLevel: logLevel}).logger(g.stderr)
			}
			start := time.Now()
			d, err := demo.Start(ctx, opts)
			if err != nil {
				return err
			}
			defer d.Stop()
			if err := printDemo(ctx, g, d, time.Since(start)); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				fmt.Fprintln(g.stderr, "\nStopping; removing", d.Dir)
				return d.Stop()
			case <-d.Done():
				return fmt.Errorf("the demo stopped: %w", d.Stop())
			}
		},
	}
	cmd.Flags().IntVar(&sites, "sites", 2, "how many sites: 2, or 3 for a triangle")
	cmd.Flags().StringVar(&logLevel, "log-level", "", "show server and gateway logs at this level (default: none)")
	return cmd
}

// printDemo writes a context file per site and prints what to try.
func printDemo(ctx context.Context, g *globals, d *demo.Demo, took time.Duration) error {
	w := g.stdout
	fmt.Fprintf(w, "\nStrait demo: %d sites federated on this machine (up in %s). Nothing but the gateways connects the sites.\n\n",
		len(d.Sites), took.Round(100*time.Millisecond))
	ctxFiles := map[string]string{}
	for _, s := range d.Sites {
		ca, err := os.ReadFile(s.CAFile)
		if err != nil {
			return err
		}
		p := filepath.Join(d.Dir, s.Name+".json")
		b := fmt.Sprintf(`{"addr": %q, "token": %q, "ca_pem": %q}`, s.Servers[0], s.ManagementToken, string(ca))
		if err := os.WriteFile(p, []byte(b), 0o600); err != nil {
			return err
		}
		ctxFiles[s.Name] = p
		fmt.Fprintf(w, "  %-12s servers %s\n", s.Name, strings.Join(s.Servers, " "))
		fmt.Fprintf(w, "  %-12s DNS %s   gateway %s   service %s.%s (virtual IPs from %s)\n", "", s.DNSAddr, s.GatewayWAN, s.Service, demo.Namespace, s.VIPRange)
		fmt.Fprintf(w, "  %-12s metrics %s (servers), %s (gateway)\n\n", "", s.MetricsURL, s.GatewayMetricsURL)
	}
	a, b := d.Sites[0], d.Sites[1]
	vip, err := d.VirtualIP(ctx, a, b)
	if err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(a.DNSAddr)
	name := b.Service + "." + demo.Namespace + "." + b.Name + ".mesh"
	svcPort := strconv.Itoa(b.ServicePort)
	fmt.Fprintf(w, "Try, from %s (the names resolve through %s's mesh DNS):\n\n", a.Name, a.Name)
	fmt.Fprintf(w, "  dig @%s -p %s %s                 # the virtual IP %s gave it: %s\n", host, port, name, a.Name, vip)
	fmt.Fprintf(w, "  curl http://%s:%s/                  # through %s's gateway, then %s's, over mTLS\n", vip, svcPort, a.Name, b.Name)
	fmt.Fprintf(w, "  curl --resolve %s:%s:%s http://%s:%s/\n", name, svcPort, vip, name, svcPort)
	fmt.Fprintf(w, "  STRAIT_DEV_CONTEXT=%s strait federation list\n", ctxFiles[a.Name])
	fmt.Fprintf(w, "  STRAIT_DEV_CONTEXT=%s strait service list\n", ctxFiles[a.Name])
	fmt.Fprintf(w, "  STRAIT_DEV_CONTEXT=%s strait intention list\n", ctxFiles[b.Name])
	fmt.Fprintf(w, "  STRAIT_DEV_CONTEXT=%s strait intention deny --from %s --to %s/%s   # then curl again: refused\n\n",
		ctxFiles[b.Name], a.Name, demo.Namespace, b.Service)
	fmt.Fprintln(w, "Ctrl-C stops everything and removes", d.Dir)
	return nil
}
