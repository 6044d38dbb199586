package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
	"github.com/straitmesh/strait/internal/golden"
)

var update = flag.Bool("update", false, "rewrite testdata/golden from the current output")

// goldenSite is a one-server site the golden test runs commands against.
type goldenSite struct {
	c   *controlplanetest.Cluster
	env map[string]string
}

func startGoldenSite(t *testing.T, name string) goldenSite {
	t.Helper()
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: name, InMemoryRaft: true, DNS: true, BundleEndpoint: true})
	return goldenSite{c: c, env: map[string]string{
		"STRAIT_ADDR":            c.Nodes[0].Addr,
		"STRAIT_TOKEN":           c.Token,
		"STRAIT_CA_FILE":         controlplane.CAFile(c.Nodes[0].Dir),
		"STRAIT_DEV_CONTEXT":     filepath.Join(t.TempDir(), "none.json"),
		"SPIFFE_ENDPOINT_SOCKET": "",
	}}
}

// TestGoldenJSON runs every command that has a --json form against real
// one-server sites (aws-east and gcp-west, federated halfway through;
// onprem, whose bundle aws-east trusts), a real agent and a real gateway
// of aws-east and compares each output, normalized (normalizer), with
// testdata/golden/<step>.json. The steps run in order: each starts from
// the state the previous ones left. Regenerate with `make golden` and
// review the diff: the --json forms are what scripts rely on.
func TestGoldenJSON(t *testing.T) {
	east, west := startGoldenSite(t, "aws-east"), startGoldenSite(t, "gcp-west")
	// onprem is no peer: east trusts its bundle with `bundle federate`.
	onprem := startGoldenSite(t, "onprem")
	onpremBundle := filepath.Join(t.TempDir(), "onprem.json")
	if code, _, errs := run(t, onprem.env, "bundle", "show", "--output", onpremBundle); code != 0 {
		t.Fatalf("bundle show: %d %q", code, errs)
	}
	socket := startAgent(t, east.c)
	wan := startGateway(t, east.c)
	svidDir := filepath.Join(t.TempDir(), "svid")
	ctx := controlplanetest.Ctx(t)
	if _, err := east.c.Client(0).Workload.CreateEntry(ctx, &apipb.CreateEntryRequest{Entry: &apipb.WorkloadEntry{
		Namespace: "payments", Service: "api", Agent: "node1",
		Selectors: []*apipb.Selector{{Type: "unix", Key: "uid", Value: strconv.Itoa(os.Getuid())}}}}); err != nil {
		t.Fatal(err)
	}
	// The agent joins in the background: wait for it, so that its token's
	// use and the agent list are there from the first step.
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		resp, err := east.c.Client(0).Workload.ListAgents(ctx, &apipb.ListAgentsRequest{})
		if err != nil || len(resp.Agents) != 1 {
			return fmt.Errorf("agents %v, %v", resp, err)
		}
		return nil
	})
	n := newNormalizer()
	for _, s := range []goldenSite{east, west, onprem} {
		nd := s.c.Nodes[0]
		n.literal(nd.Addr, "<"+s.siteName()+" server>")
		n.literal(nd.DNSAddr, "<"+s.siteName()+" dns>")
		n.literal(nd.BundleAddr, "<"+s.siteName()+" bundle endpoint>")
	}
	n.literal(svidDir, "<svid dir>")
	n.literal(socket, "<agent socket>")
	n.literal(wan, "<gw-1 wan>")
	// The one uid selector is this process's (the entry workload svid uses).
	n.literal(`"value": "`+strconv.Itoa(os.Getuid())+`"`, `"value": "<this process's uid>"`)

	var invite string // the federation token east issues, for west to redeem
	steps := []struct {
		name string
		site goldenSite
		args func() []string
		code int
		// ready, when set, is polled on the exit status and output until
		// it returns nil (state that settles asynchronously); that output
		// is compared.
		ready func(code int, out string) error
	}{
		{name: "version", site: east, args: fixed("version")},
		{name: "service-register", site: east, args: fixed("service", "register", "--ns", "payments", "--svc", "api",
			"--port", "http=8080/http", "--port", "grpc=9090/grpc", "--meta", "team=payments", "--address", "10.0.0.5", "--id", "api-1", "--zone", "us-east-1a")},
		{name: "service-register-second-instance", site: east, args: fixed("service", "register", "--ns", "payments", "--svc", "api",
			"--port", "http=8081/http", "--port", "grpc=9091/grpc", "--meta", "team=payments", "--address", "10.0.0.6", "--id", "api-2", "--ttl", "1h")},
		{name: "service-list", site: east, args: fixed("service", "list")},
		{name: "service-show", site: east, args: fixed("service", "show", "--ns", "payments", "--svc", "api", "--consistent")},
		{name: "service-deregister", site: east, args: fixed("service", "deregister", "--ns", "payments", "--svc", "api", "--id", "api-2")},
		{name: "intention-allow", site: east, args: fixed("intention", "allow", "--from", "gcp-west/web/front", "--to", "payments/api", "--description", "the storefront")},
		{name: "intention-deny", site: east, args: fixed("intention", "deny", "--from", "gcp-west/batch", "--to", "payments/api")},
		{name: "intention-list", site: east, args: fixed("intention", "list")},
		{name: "intention-check-allowed", site: east, args: fixed("intention", "check", "--from", "gcp-west/web/front", "--to", "payments/api")},
		{name: "intention-check-denied", site: east, args: fixed("intention", "check", "--from", "gcp-west/batch/report", "--to", "payments/api"), code: 1},
		{name: "token-create", site: east, args: fixed("token", "create", "--kind", "read", "--description", "dashboards", "--ttl", "1h")},
		{name: "token-list", site: east, args: fixed("token", "list")},
		{name: "workload-register", site: east, args: fixed("workload", "register", "--ns", "payments", "--svc", "web", "--agent", "*", "--selector", "unix:path:/usr/local/bin/web", "--svid-ttl", "30m")},
		{name: "workload-list", site: east, args: fixed("workload", "list")},
		{name: "agent-list", site: east, args: fixed("agent", "list")},
		{name: "workload-svid", site: east, args: fixed("workload", "svid", "--socket", socket, "--write", svidDir),
			ready: func(code int, out string) error { return wantCount(code, out, "svids", 1) }},
		{name: "gateway-list", site: east, args: fixed("gateway", "list")},
		{name: "operator-raft-list-peers", site: east, args: fixed("operator", "raft", "list-peers")},
		{name: "ca-status", site: east, args: fixed("ca", "status")},
		{name: "ca-rotate", site: east, args: fixed("ca", "rotate")},
		{name: "ca-status-rotating", site: east, args: fixed("ca", "status")},
		{name: "bundle-list-none", site: east, args: fixed("bundle", "list")},
		{name: "bundle-federate", site: east, args: fixed("bundle", "federate", "--trust-domain", "onprem.strait",
			"--url", "https://"+onprem.c.Nodes[0].BundleAddr+"/", "--endpoint-id", "spiffe://onprem.strait/strait/bundle-endpoint", "--bundle-file", onpremBundle)},
		{name: "bundle-list-federated", site: east, args: fixed("bundle", "list"), ready: bundlesFetched},
		{name: "federation-token", site: east, args: fixed("federation", "token", "--peer", "gcp-west", "--ttl", "10m")},
		{name: "federation-join", site: west, args: func() []string { return []string{"federation", "join", invite} }},
		{name: "export", site: east, args: fixed("export", "--ns", "payments", "--svc", "api", "--to", "gcp-west")},
		{name: "export-list", site: east, args: fixed("export", "list")},
		{name: "federation-list-exporter", site: east, args: fixed("federation", "list"), ready: peerSettled(1, 0, 0)},
		{name: "federation-show", site: east, args: fixed("federation", "show", "gcp-west"), ready: peerSettled(0, 0, 0)},
		{name: "federation-list-importer", site: west, args: fixed("federation", "list"), ready: peerSettled(1, 1, 1)},
		{name: "service-list-imported", site: west, args: fixed("service", "list"),
			ready: func(code int, out string) error { return wantCount(code, out, "services", 1) }},
		{name: "service-show-imported", site: west, args: fixed("service", "show", "--ns", "payments", "--svc", "api", "--peer", "aws-east")},
		{name: "bundle-list-peer", site: west, args: fixed("bundle", "list"), ready: bundlesFetched},
		{name: "status", site: east, args: fixed("status"), ready: gatewaysPassing},
		{name: "ping-unresolved", site: west, args: fixed("ping", "nope.payments.aws-east.mesh"), code: 1},
		{name: "federation-delete", site: west, args: fixed("federation", "delete", "aws-east")},
	}
	var used []string
	for i, st := range steps {
		name := fmt.Sprintf("%02d.%s", i+1, st.name)
		path := filepath.Join("testdata", "golden", name+".json")
		ok := t.Run(name, func(t *testing.T) {
			used = append(used, path)
			args := append(st.args(), "--json")
			code, out, errs := run(t, st.site.env, args...)
			if st.ready != nil {
				controlplanetest.WaitFor(t, 60*time.Second, func() error {
					if err := st.ready(code, out); err != nil {
						code, out, errs = run(t, st.site.env, args...)
						return err
					}
					return nil
				})
			}
			if code != st.code {
				t.Fatalf("strait %s: exit %d, want %d; stderr %q", strings.Join(args, " "), code, st.code, errs)
			}
			if !json.Valid([]byte(out)) {
				t.Fatalf("strait %s: stdout is not JSON:\n%s", strings.Join(args, " "), out)
			}
			if st.name == "federation-token" {
				var tok struct{ Token string }
				if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Token == "" {
					t.Fatalf("federation token --json: %v\n%s", err, out)
				}
				invite = tok.Token
			}
			golden.Check(t, path, []byte(n.normalize(out)), *update)
		})
		if !ok {
			return // the steps after build on this one
		}
	}
	if len(used) == len(steps) { // every step ran: no -run selected some
		golden.CheckUnused(t, filepath.Join("testdata", "golden"), used, *update)
	}
}

func fixed(args ...string) func() []string { return func() []string { return args } }

func (s goldenSite) siteName() string { return s.c.Nodes[0].Server.Site() }

// wantCount is a ready condition: exit status 0 and n elements in the
// output's list key.
func wantCount(code int, out, key string, n int) error {
	var m map[string]json.RawMessage
	var list []any
	if err := json.Unmarshal([]byte(out), &m); code != 0 || err != nil {
		return fmt.Errorf("exit %d, %v: %s", code, err, out)
	}
	if err := json.Unmarshal(m[key], &list); err != nil || len(list) != n {
		return fmt.Errorf("%d %s (%v), want %d", len(list), key, err, n)
	}
	return nil
}

// bundlesFetched is a ready condition for `bundle list`: every bundle
// fetched from its endpoint once.
func bundlesFetched(code int, out string) error {
	var l struct {
		Bundles []struct {
			LastSuccess string `json:"last_success"`
		}
	}
	if err := json.Unmarshal([]byte(out), &l); code != 0 || err != nil {
		return fmt.Errorf("exit %d, %v: %s", code, err, out)
	}
	for _, b := range l.Bundles {
		if b.LastSuccess == "" {
			return fmt.Errorf("a bundle not fetched yet: %s", out)
		}
	}
	return nil
}

// gatewaysPassing is a ready condition for `status`: every gateway
// passing.
func gatewaysPassing(code int, out string) error {
	var st struct {
		Gateways []struct{ Health string }
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return fmt.Errorf("exit %d, %v: %s", code, err, out)
	}
	for _, g := range st.Gateways {
		if g.Health != "passing" {
			return fmt.Errorf("a gateway is %q", g.Health)
		}
	}
	return nil
}

// startGateway runs a real gateway "gw-1" joined to c on a loopback WAN
// address, and returns that address once the gateway is ready and
// passing in the catalog.
func startGateway(t *testing.T, c *controlplanetest.Cluster) string {
	t.Helper()
	ctx := controlplanetest.Ctx(t)
	tok, err := c.Client(0).ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_GATEWAY})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{Name: "gw-1", Servers: []string{c.Nodes[0].Addr}, DataDir: t.TempDir(), JoinToken: tok.Secret,
		WANListener: ln, DrainTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway: %v", err)
		}
	})
	select {
	case <-gw.Ready():
	case err := <-done:
		t.Fatalf("gateway exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("gateway not ready within 30s")
	}
	// Its first heartbeat puts it in the catalog, passing.
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		resp, err := c.Client(0).Catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: "strait", Name: "gateway", PassingOnly: true})
		if err != nil || len(resp.Instances) != 1 {
			return fmt.Errorf("passing gateways %v, %v", resp, err)
		}
		return nil
	})
	return ln.Addr().String()
}

// peerSettled is a ready condition for `federation list` (peers > 0) or
// `federation show` (peers == 0: one peer object): each peer active, both
// streams connected, every export acknowledged, imported services and
// the peer's gateways imported, and its bundle fetched from its endpoint
// once.
func peerSettled(peers, imported, gateways int) func(code int, out string) error {
	return func(code int, out string) error {
		type peer struct {
			Bundle struct {
				LastSuccess string `json:"last_success"`
			}
			Imports struct {
				State     string
				Connected bool
				Services  int
				Gateways  []string
			}
			Exports struct {
				Connected bool
				Sent      any `json:"sent_version"`
				Acked     any `json:"acked_version"`
			}
		}
		var list []peer
		if peers == 0 {
			var p peer
			if err := json.Unmarshal([]byte(out), &p); code != 0 || err != nil {
				return fmt.Errorf("exit %d, %v: %s", code, err, out)
			}
			list = []peer{p}
		} else {
			var l struct{ Peers []peer }
			if err := json.Unmarshal([]byte(out), &l); code != 0 || err != nil {
				return fmt.Errorf("exit %d, %v: %s", code, err, out)
			}
			list = l.Peers
			if len(list) != peers {
				return fmt.Errorf("%d peers, want %d", len(list), peers)
			}
		}
		for _, p := range list {
			if p.Bundle.LastSuccess == "" || p.Imports.State != "PEER_STATE_ACTIVE" || !p.Imports.Connected || p.Imports.Services != imported || len(p.Imports.Gateways) != gateways ||
				!p.Exports.Connected || fmt.Sprint(p.Exports.Sent) != fmt.Sprint(p.Exports.Acked) {
				return fmt.Errorf("peer not settled: %+v", p)
			}
		}
		return nil
	}
}

// normalizer makes --json output the same on every run and machine. It
// works on the output's text, so that the golden files keep the order and
// layout users see, and rewrites, in this order:
//
//   - the literals registered with literal (the sites' server, DNS and
//     bundle endpoint addresses, temporary paths) to their names;
//   - the values of volatileKeys (Raft indexes and terms, replication
//     versions, bundle sequences, byte counts, lags: they depend on what
//     else the servers wrote and when) to "<key>";
//   - RFC 3339 times to "<time>";
//   - secrets (strait_...), federation tokens (strait-fed1....), random
//     IDs (32 hex digits: token accessors, workload entries) and key IDs
//     (40 hex digits) to "<secret-N>", "<federation-token-N>", "<id-N>"
//     and "<key-id-N>", numbered in order of first appearance in the whole
//     test, so that equal values stay equal (a token's accessor in
//     `token create` and `token list`);
//   - any other loopback address's port to "<port>".
//
// Everything else, names, counts, states, addresses the test chose, is
// compared as it is.
type normalizer struct {
	literals [][2]string
	ids      map[string]string
	counts   map[string]int
}

func newNormalizer() *normalizer {
	return &normalizer{ids: map[string]string{}, counts: map[string]int{}}
}

// literal replaces every occurrence of old (a path, an address) by new.
func (n *normalizer) literal(old, new string) {
	if old != "" {
		n.literals = append(n.literals, [2]string{old, new})
	}
}

// volatileKeys are the fields whose values normalize hides.
var volatileKeys = []string{
	"index", "create_index", "modify_index", "commit_index", "applied_index", "term", "lag_entries",
	"version", "sent_version", "acked_version", "sequence", "bundle_sequence", "bytes_sent", "lag",
}

var (
	volatileRe = regexp.MustCompile(`"(` + strings.Join(volatileKeys, "|") + `)": ("[0-9][0-9.]*s?"|[0-9]+)`)
	rfc3339Re  = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
	idRes      = []struct {
		kind string
		re   *regexp.Regexp
	}{
		{"federation-token", regexp.MustCompile(`strait-fed1\.[A-Za-z0-9_.-]+`)},
		{"secret", regexp.MustCompile(`strait_[A-Za-z0-9_-]{16,}`)},
		{"key-id", regexp.MustCompile(`\b[0-9a-f]{40}\b`)},
		{"id", regexp.MustCompile(`\b[0-9a-f]{32}\b`)},
	}
	loopbackRe = regexp.MustCompile(`\b127\.\d+\.\d+\.\d+:\d+\b`)
)

// normalize rewrites one command's output.
func (n *normalizer) normalize(out string) string {
	for _, l := range n.literals {
		out = strings.ReplaceAll(out, l[0], l[1])
	}
	out = volatileRe.ReplaceAllString(out, `"$1": "<$1>"`)
	out = rfc3339Re.ReplaceAllString(out, "<time>")
	for _, r := range idRes {
		out = r.re.ReplaceAllStringFunc(out, func(s string) string { return n.id(r.kind, s) })
	}
	return loopbackRe.ReplaceAllString(out, "127.0.0.1:<port>")
}

// id is the placeholder of a volatile value: its kind and its number in
// order of first appearance.
func (n *normalizer) id(kind, v string) string {
	if p, ok := n.ids[v]; ok {
		return p
	}
	n.counts[kind]++
	p := fmt.Sprintf("<%s-%d>", kind, n.counts[kind])
	n.ids[v] = p
	return p
}
