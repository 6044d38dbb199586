package cli

import (
	"context"
	"fmt"
	"io"
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
				if ctx.Err() != nil {
					// Interrupted while starting: Start has cleaned up.
					fmt.Fprintln(g.stderr, "\nStopped before the demo was up; nothing is left behind.")
					return nil
				}
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
	fwd, err := demoPathOf(ctx, d, a, b)
	if err != nil {
		return err
	}
	rev, err := demoPathOf(ctx, d, b, a)
	if err != nil {
		return err
	}
	writeDemoTry(w, selfCommand(), ctxFiles, fwd, rev)
	fmt.Fprintln(w, "Ctrl-C stops everything and removes", d.Dir)
	return nil
}

// demoPath is one direction the banner shows: a client in From calls To's
// sample service, through From's mesh DNS and both gateways.
type demoPath struct {
	From, To  string // site names
	DNSAddr   string // From's mesh DNS
	Service   string // To's sample service (in demo.Namespace)
	VIP       string // the virtual IP From gave it
	Port      int
	GatewayMx string // From's gateway metrics URL
}

func (p demoPath) name() string { return p.Service + "." + demo.Namespace + "." + p.To + ".mesh" }

func demoPathOf(ctx context.Context, d *demo.Demo, from, to *demo.Site) (demoPath, error) {
	vip, err := d.VirtualIP(ctx, from, to)
	if err != nil {
		return demoPath{}, err
	}
	return demoPath{From: from.Name, To: to.Name, DNSAddr: from.DNSAddr, Service: to.Service, VIP: vip, Port: to.ServicePort, GatewayMx: to.GatewayMetricsURL}, nil
}

// writeDemoTry prints the commands to try; self is how to run this binary
// (so that every command printed works as pasted).
func writeDemoTry(w io.Writer, self string, ctxFiles map[string]string, fwd, rev demoPath) {
	dig := func(p demoPath) string {
		host, port, _ := net.SplitHostPort(p.DNSAddr)
		return fmt.Sprintf("dig @%s -p %s %s", host, port, p.name())
	}
	cli := func(site, args string) string {
		return fmt.Sprintf("STRAIT_DEV_CONTEXT=%s %s %s", ctxFiles[site], self, args)
	}
	port := strconv.Itoa(fwd.Port)
	fmt.Fprintf(w, "Try, from %s (the names resolve through %s's mesh DNS):\n\n", fwd.From, fwd.From)
	fmt.Fprintf(w, "  %s                 # the virtual IP %s gave it: %s\n", dig(fwd), fwd.From, fwd.VIP)
	fmt.Fprintf(w, "  curl http://%s:%s/                  # through %s's gateway, then %s's, over mTLS\n", fwd.VIP, port, fwd.From, fwd.To)
	fmt.Fprintf(w, "  curl --resolve %s:%s:%s http://%s:%s/\n", fwd.name(), port, fwd.VIP, fwd.name(), port)
	fmt.Fprintf(w, "  %s\n", cli(fwd.From, "federation list"))
	fmt.Fprintf(w, "  %s\n", cli(fwd.From, "service list"))
	fmt.Fprintf(w, "  %s\n", cli(fwd.To, "intention list"))
	fmt.Fprintf(w, "  %s   # then curl again: refused\n", cli(fwd.To, fmt.Sprintf("intention deny --from %s --to %s/%s", fwd.From, demo.Namespace, fwd.Service)))
	fmt.Fprintf(w, "  %s   # and allowed again\n\n", cli(fwd.To, fmt.Sprintf("intention allow --from %s --to %s/%s", fwd.From, demo.Namespace, fwd.Service)))
	fmt.Fprintf(w, "The other way, from %s:\n\n", rev.From)
	fmt.Fprintf(w, "  %s                 # %s\n", dig(rev), rev.VIP)
	fmt.Fprintf(w, "  curl http://%s:%d/\n\n", rev.VIP, rev.Port)
	fmt.Fprintf(w, "A refused connection shows as an empty reply to curl. The gateways say why in their logs\n")
	fmt.Fprintf(w, "(start the demo with --log-level info to see them) and count it in\n")
	fmt.Fprintf(w, "strait_gateway_authorization_denials_total at %s.\n\n", fwd.GatewayMx)
}
