package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

func newStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the whole site: servers (probed), peers, gateways, CA, DNS, and a verdict",
		Long: `Show the whole site as the connected server sees it: it probes every server
(a stopped one shows as unreachable), lists peer sites (state, last contact,
replication lag), gateways (passing or not), the CA and the servers' SVID
expiry and where each serves DNS, and ends with a verdict:

  healthy    nothing is wrong
  degraded   the site serves, but something is down (a server, a peer's
             stream, a gateway)
  unhealthy  the site cannot serve writes: no leader, or no quorum

Exit status 1 unless healthy, so scripts can use it as a check.`,
		Example: `  strait status
  strait status --json | jq .verdict`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				st, err := cl.Operator.SiteStatus(ctx, &apipb.SiteStatusRequest{})
				if err != nil {
					return err
				}
				if g.json {
					err = printJSONAllFields(g.stdout, st)
				} else {
					err = printSiteStatus(g.stdout, st, time.Now())
				}
				if err != nil {
					return err
				}
				if !st.Healthy {
					return fmt.Errorf("site %s is %s: %d problem(s), listed above", st.Site, st.Verdict, len(st.Problems))
				}
				return nil
			})
		},
	}
}

func printSiteStatus(w io.Writer, st *apipb.SiteStatusResponse, now time.Time) error {
	fmt.Fprintf(w, "Site:      %s (trust domain %s), answered by %s\n", st.Site, st.TrustDomain, st.AnsweredBy)
	fmt.Fprintf(w, "Leader:    %s %s\n", cmp.Or(st.LeaderId, "(none)"), st.LeaderAddress)
	fmt.Fprintf(w, "Catalog:   %s, %s\n", countNoun(int(st.Services), "service"), countNoun(int(st.Instances), "instance"))

	fmt.Fprintf(w, "\nServers:\n")
	t := newTable(w, "  NODE", "ADDRESS", "STATE", "VOTER", "LAST CONTACT", "LAG", "SVID EXPIRES", "DNS", "VERSION")
	for _, sv := range st.Servers {
		s := sv.Status
		if !sv.Reachable || s == nil {
			t.row("  "+sv.Id, sv.Address, "unreachable", fmt.Sprint(sv.Voter), "-", "-", "-", "-", "-")
			continue
		}
		lag := "-"
		if s.State != "leader" {
			lag = countNoun(int(sv.LagEntries), "entry")
		}
		t.row("  "+sv.Id, sv.Address, s.State, fmt.Sprint(sv.Voter), ago(s.LastContact.AsDuration()), lag,
			expiresIn(s.SvidExpires.AsTime(), s.SvidExpires != nil, now), cmp.Or(s.DnsAddress, "-"), s.Version)
	}
	if err := t.flush(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nPeers:\n")
	if len(st.Peers) == 0 {
		fmt.Fprintf(w, "  none (federate with `strait federation token` / `join`)\n")
	} else {
		t = newTable(w, "  NAME", "SITE", "STATE", "LAST CONTACT", "IMPORT STREAM", "IMPORTS", "EXPORTS", "EXPORT LAG", "GATEWAYS")
		for _, p := range st.Peers {
			im, ex := p.Imports, p.Exports
			t.row("  "+p.Name, p.Site, peerState(p), contactAgo(im), streamState(im.GetConnected(), im.GetLastError()),
				fmt.Sprint(im.GetServices()), fmt.Sprint(ex.GetServices()), exportLag(ex), cmp.Or(strings.Join(im.GetGateways(), ","), "none"))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}

	fmt.Fprintf(w, "\nGateways:\n")
	if len(st.Gateways) == 0 {
		fmt.Fprintf(w, "  none joined\n")
	} else {
		// TUNNELS: peers' gateways with a tunnel up, of those configured
		// (tunnels open when a connection first needs them).
		t = newTable(w, "  NAME", "WAN ADDRESS", "HEALTH", "TUNNELS")
		for _, gw := range st.Gateways {
			health := gw.Health
			if gw.Revoked {
				health = "revoked"
			}
			tunnels := "-"
			if gw.Health == "passing" || gw.Health == "critical" {
				tunnels = fmt.Sprintf("%d/%d", gw.PeerGatewaysUp, gw.PeerGateways)
			}
			t.row("  "+gw.Name, cmp.Or(gw.WanAddress, "-"), health, tunnels)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}

	fmt.Fprintf(w, "\nCA:\n")
	for _, r := range st.GetCa().GetRoots() {
		fmt.Fprintf(w, "  %-9s root %s, expires %s\n", r.Phase, shortID(r.SubjectKeyId), expiresIn(r.NotAfter.AsTime(), r.NotAfter != nil, now))
	}

	fmt.Fprintf(w, "\nVerdict:   %s\n", strings.ToUpper(st.Verdict))
	for _, p := range st.Problems {
		fmt.Fprintf(w, "  - %s\n", p)
	}
	return nil
}

// expiresIn shows a time to come and how far it is.
func expiresIn(t time.Time, set bool, now time.Time) string {
	if !set {
		return "-"
	}
	d := t.Sub(now)
	if d <= 0 {
		return t.UTC().Format(time.RFC3339) + " (EXPIRED)"
	}
	return fmt.Sprintf("%s (in %s)", t.UTC().Format(time.RFC3339), roughDuration(d))
}

// roughDuration rounds a duration for people: 71h, 4h12m, 3m.
func roughDuration(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		h := int(d.Hours())
		return fmt.Sprintf("%dd%dh", h/24, h%24)
	case d >= time.Hour:
		return d.Truncate(time.Minute).String()
	}
	return d.Round(time.Second).String()
}

func shortID(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

func countNoun(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	if strings.HasSuffix(word, "y") {
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(word, "y"))
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// printJSONAllFields is printJSON with every field present, false and zero
// included, so that a health check can test "healthy" or "reachable"
// without knowing the proto3 JSON rule that omits them.
func printJSONAllFields(w io.Writer, m proto.Message) error {
	return writeJSON(w, protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}, m)
}
