package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
)

// pingResult is what `strait ping` found (its --json form). Durations are
// milliseconds; a stage not reached is absent.
type pingResult struct {
	Name      string `json:"name"`
	Site      string `json:"site"`
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	// From is the connected server's site.
	From      string  `json:"from"`
	DNSServer string  `json:"dns_server"`
	Address   string  `json:"address,omitempty"`
	DNSMillis float64 `json:"dns_ms,omitempty"`
	Port      int     `json:"port,omitempty"`
	// Intention is the destination site's decision for this site.
	Intention *pingIntention `json:"intention,omitempty"`
	// LocalGateways and PeerGateways are the gateways a connection can
	// cross (which one carried it is not known here).
	LocalGateways   []string `json:"local_gateways,omitempty"`
	PeerGateways    []string `json:"peer_gateways,omitempty"`
	ConnectMillis   float64  `json:"connect_ms,omitempty"`
	FirstByteMillis float64  `json:"first_byte_ms,omitempty"`
	RoundTripMillis float64  `json:"round_trip_ms,omitempty"`
	// Outcome: replied (a first byte came back), open (the connection was
	// held open without a reply within --wait), or failed.
	Outcome string `json:"outcome"`
	// FailedStage: dns, port, connect or carry; empty unless failed.
	FailedStage string `json:"failed_stage,omitempty"`
	Error       string `json:"error,omitempty"`
}

type pingIntention struct {
	Checked bool   `json:"checked"`
	Allowed bool   `json:"allowed"`
	Matched string `json:"matched,omitempty"`
	Error   string `json:"error,omitempty"`
}

func newPingCmd(g *globals) *cobra.Command {
	var (
		dnsAddr, send string
		port          int
		wait          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "ping SVC.NS.SITE.mesh",
		Short: "Probe the path to a service of another site: DNS, intention, gateways, connection, round trip",
		Long: `Probe the whole path to another site's service as a client would, and say where it breaks:

  dns        the name resolves through mesh DNS (--dns, or the connected server's) to a virtual IP
  intention  the destination site's decision for a connection from this site (asked of that site)
  gateways   this site's gateways and the peer's, one of each carries the connection
  connect    a TCP connection to the virtual IP and the service's port (--port, or its first)
  carry      a first byte comes back (for an http port a HEAD request is sent; --send sends
             your own bytes), or the connection stays open for --wait; a close without a
             byte means a gateway refused it or the service closed it

Exit status 1 when a stage fails, naming it.`,
		Example: `  strait ping api.payments.gcp-west.mesh
  strait ping db.payments.gcp-west.mesh --port 5432 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := strings.TrimSuffix(args[0], ".")
			labels := strings.Split(name, ".")
			if len(labels) < 4 {
				return usageError{fmt.Errorf("%q: want SVC.NS.SITE.mesh, such as api.payments.gcp-west.mesh", args[0])}
			}
			for _, l := range labels[:3] {
				if err := meshname.ValidLabel(l); err != nil {
					return usageError{fmt.Errorf("%q: %w", args[0], err)}
				}
			}
			r := &pingResult{Name: name, Service: labels[0], Namespace: labels[1], Site: labels[2]}
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				err := ping(ctx, cl, r, pingOptions{dns: dnsAddr, port: port, send: send, sendSet: cmd.Flags().Changed("send"), wait: wait})
				if g.json {
					enc := json.NewEncoder(g.stdout)
					enc.SetIndent("", "  ")
					if jerr := enc.Encode(r); jerr != nil {
						return jerr
					}
				} else {
					printPing(g.stdout, r)
				}
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&dnsAddr, "dns", "", "mesh DNS to ask, host:port (default: the connected server's)")
	f.IntVar(&port, "port", 0, "port to connect to (default: the service's first port)")
	f.StringVar(&send, "send", "", "bytes to send once connected (default: a HEAD request for an http port, nothing otherwise)")
	f.DurationVar(&wait, "wait", 3*time.Second, "how long to wait for a first byte")
	return cmd
}

type pingOptions struct {
	dns     string
	port    int
	send    string
	sendSet bool
	wait    time.Duration
}

// pingConnectTimeout bounds the TCP connect to the virtual IP (a range
// routed nowhere would otherwise hang until --timeout).
const pingConnectTimeout = 10 * time.Second

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// ping runs the stages in order, filling r; it returns an error naming
// the stage that failed.
func ping(ctx context.Context, cl *apiclient.Client, r *pingResult, o pingOptions) error {
	fail := func(stage string, err error) error {
		r.Outcome, r.FailedStage, r.Error = "failed", stage, err.Error()
		return fmt.Errorf("ping %s failed at %s: %w", r.Name, stage, err)
	}
	st, err := cl.Operator.Status(ctx, &apipb.StatusRequest{})
	if err != nil {
		return err
	}
	r.From = st.Site
	r.DNSServer = cmp.Or(o.dns, st.DnsAddress)
	if r.DNSServer == "" {
		return fail("dns", errors.New("the connected server serves no mesh DNS: pass --dns host:port"))
	}

	// DNS.
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, r.DNSServer)
	}}
	start := time.Now()
	addrs, err := res.LookupNetIP(ctx, "ip4", r.Name)
	if dnsErr := (*net.DNSError)(nil); errors.As(err, &dnsErr) {
		// The resolver names a server of the host's resolv.conf, which
		// it did not ask: the dial above went to r.DNSServer.
		dnsErr.Server = ""
	}
	if err != nil || len(addrs) == 0 {
		return fail("dns", fmt.Errorf("%s does not resolve through %s (%v): is %s/%s exported by %s to %s? see `strait service list`",
			r.Name, r.DNSServer, err, r.Namespace, r.Service, r.Site, r.From))
	}
	r.DNSMillis = millis(time.Since(start))
	r.Address = addrs[0].Unmap().String()

	// The port, the intention and the gateways, from the servers.
	remote := r.Site != r.From
	svc, err := cl.Catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: r.Namespace, Name: r.Service, Peer: peerOrEmpty(remote, r.Site)})
	r.Port = o.port
	send := o.send
	if err == nil && svc.Service != nil && len(svc.Service.Ports) > 0 {
		first := svc.Service.Ports[0]
		if r.Port == 0 {
			for _, in := range svc.Instances {
				if p := in.Ports[first.Name]; p != 0 {
					r.Port = int(p)
					break
				}
			}
		}
		if !o.sendSet && first.Protocol == apipb.Protocol_PROTOCOL_HTTP {
			send = "HEAD / HTTP/1.1\r\nHost: " + r.Name + "\r\nUser-Agent: strait-ping\r\nConnection: close\r\n\r\n"
		}
	}
	if remote {
		r.Intention = &pingIntention{}
		if d, err := cl.Intentions.CheckPeer(ctx, &apipb.CheckPeerIntentionRequest{Peer: r.Site, Namespace: r.Namespace, Service: r.Service}); err != nil {
			r.Intention.Error = status.Convert(err).Message()
		} else {
			r.Intention.Checked, r.Intention.Allowed = true, d.Allowed
			if d.Matched != nil {
				r.Intention.Matched = fmt.Sprintf("%s %s -> %s", actionName(d.Matched.Action), d.Matched.Source, d.Matched.Destination)
			}
		}
		if gw, err := cl.Catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: "strait", Name: "gateway", PassingOnly: true}); err == nil {
			for _, in := range gw.Instances {
				r.LocalGateways = append(r.LocalGateways, fmt.Sprintf("%s (%s)", in.Id, net.JoinHostPort(in.Address, strconv.Itoa(int(in.Ports["wan"])))))
			}
		}
		if p, err := cl.Federation.List(ctx, &apipb.ListPeersFedRequest{Name: r.Site}); err == nil && len(p.Peers) == 1 {
			r.PeerGateways = p.Peers[0].GetImports().GetGateways()
		}
	}
	if r.Port == 0 {
		return fail("port", fmt.Errorf("no port known for %s/%s: pass --port", r.Namespace, r.Service))
	}

	// Connect and carry.
	target := net.JoinHostPort(r.Address, strconv.Itoa(r.Port))
	start = time.Now()
	d := net.Dialer{Timeout: pingConnectTimeout}
	conn, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return fail("connect", fmt.Errorf("%s: %w (nothing listens there: is this site's gateway running and configured? see `strait status`)", target, err))
	}
	defer conn.Close()
	r.ConnectMillis = millis(time.Since(start))
	if send != "" {
		if _, err := io.WriteString(conn, send); err != nil {
			return fail("carry", fmt.Errorf("send: %w", err))
		}
	}
	conn.SetReadDeadline(time.Now().Add(o.wait))
	var b [1]byte
	_, err = conn.Read(b[:])
	total := time.Since(start)
	var ne net.Error
	switch {
	case err == nil:
		r.Outcome, r.FirstByteMillis, r.RoundTripMillis = "replied", millis(total), millis(total)
	case errors.As(err, &ne) && ne.Timeout():
		r.Outcome, r.RoundTripMillis = "open", r.ConnectMillis
	default:
		why := "a gateway refused it (see the intention above and the gateways' logs) or the service closed it"
		if r.Intention != nil && r.Intention.Checked && !r.Intention.Allowed {
			why = fmt.Sprintf("%s denies connections from %s to %s/%s", r.Site, r.From, r.Namespace, r.Service)
		}
		return fail("carry", fmt.Errorf("the connection was closed without a reply after %s: %s", total.Round(time.Millisecond), why))
	}
	return nil
}

func peerOrEmpty(remote bool, site string) string {
	if remote {
		return site
	}
	return ""
}

func printPing(w io.Writer, r *pingResult) {
	fmt.Fprintf(w, "PING %s from %s\n", r.Name, r.From)
	row := func(k, v string) { fmt.Fprintf(w, "  %-10s %s\n", k, v) }
	if r.Address != "" {
		row("dns", fmt.Sprintf("%s (asked %s, %.1fms)", r.Address, r.DNSServer, r.DNSMillis))
	}
	if in := r.Intention; in != nil {
		switch {
		case !in.Checked:
			row("intention", "unknown: "+in.Error)
		case in.Matched == "":
			row("intention", fmt.Sprintf("%s by %s: no intention matches (default deny across sites)", allowedWord(in.Allowed), r.Site))
		default:
			row("intention", fmt.Sprintf("%s by %s: %s", allowedWord(in.Allowed), r.Site, in.Matched))
		}
	}
	if r.Intention != nil {
		row("gateways", fmt.Sprintf("%s -> %s gateway %s", noneIfEmpty(strings.Join(r.LocalGateways, ", ")), r.Site, noneIfEmpty(strings.Join(r.PeerGateways, ", "))))
	}
	if r.ConnectMillis > 0 {
		row("connect", fmt.Sprintf("%s in %.1fms", net.JoinHostPort(r.Address, strconv.Itoa(r.Port)), r.ConnectMillis))
	}
	switch r.Outcome {
	case "replied":
		row("carried", fmt.Sprintf("first byte after %.1fms", r.FirstByteMillis))
		row("round trip", fmt.Sprintf("%.1fms", r.RoundTripMillis))
	case "open":
		row("carried", "the connection is open, no reply yet (the service waits for the client to speak)")
	case "failed":
		row("FAILED", r.FailedStage+": "+r.Error)
	}
}

func allowedWord(ok bool) string {
	if ok {
		return "allowed"
	}
	return "denied"
}

func noneIfEmpty(s string) string { return cmp.Or(s, "none") }
