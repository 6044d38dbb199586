package strait_test

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/straitmesh/strait/"

// depRule forbids the packages matched by from to link (directly or
// through others) any package matched by banned, except those matched by
// allowed. A pattern ending in "/..." matches a path and everything below
// it; any other pattern matches one path. Patterns without a dot in their
// first element are relative to the module.
type depRule struct {
	from    []string
	banned  []string
	allowed []string
	why     string
}

// The rules of docs/architecture.md ("Who may import whom").
var depRules = []depRule{
	{
		from: []string{"gateway/...", "dns/...", "trust/agent/...", "apiclient/...", "proxyless/...",
			"terraform/provider/...", "cmd/terraform-provider-strait"},
		banned: []string{"github.com/hashicorp/raft/...", "github.com/hashicorp/raft-wal/...",
			"controlplane", "controlplane/state", "github.com/aws/aws-sdk-go-v2/..."},
		why: "data planes and clients run on many hosts: they consume the API and xDS, never Raft, the state machine or a cloud SDK",
	},
	{
		from:    []string{"trust/..."},
		banned:  []string{"controlplane/..."},
		allowed: []string{"controlplane/api/apipb", "controlplane/state/statepb"},
		why:     "trust/ is below the control plane: it may use the wire messages, not the server",
	},
	{
		from:   []string{"federation/..."},
		banned: []string{"controlplane", "controlplane/api", "github.com/hashicorp/raft/..."},
		why:    "federation/ gets consensus and state through interfaces it declares",
	},
	{
		from:   []string{"federation/replication/..."},
		banned: []string{"controlplane/state"},
		why:    "the replication stream reads the catalog through an interface it declares",
	},
	{
		from: []string{"internal/...", "meshname/...", "policy/...", "trust/...", "federation/...", "dns/...",
			"gateway/...", "controlplane/...", "cloud/...", "apiclient/...", "proxyless/..."},
		banned: []string{"cmd/...", "demo/...", "scenarios/...", "bench/..."},
		why:    "no arrow runs back up: only binaries, the demo and tests wire the whole graph",
	},
}

func expand(p string) string {
	if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ".") {
		return p
	}
	return module + p
}

func matches(pattern, path string) bool {
	pattern = expand(pattern)
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return path == base || strings.HasPrefix(path, base+"/")
	}
	return path == pattern
}

func matchesAny(patterns []string, path string) bool {
	for _, p := range patterns {
		if matches(p, path) {
			return true
		}
	}
	return false
}

// violations returns "pkg links dep (why)" for every broken rule, given
// each package's transitive dependencies.
func violations(rules []depRule, deps map[string][]string) []string {
	var out []string
	for pkg, ds := range deps {
		for _, r := range rules {
			if !matchesAny(r.from, pkg) {
				continue
			}
			for _, d := range ds {
				if d != pkg && matchesAny(r.banned, d) && !matchesAny(r.allowed, d) {
					out = append(out, pkg+" links "+d+": "+r.why)
				}
			}
		}
	}
	return out
}

// TestDependencyRules fails when a package starts linking what
// docs/architecture.md says it must not (as Tailscale's deptest does).
func TestDependencyRules(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list over the module")
	}
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", "./...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	deps := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 {
			deps[f[0]] = f[1:]
		}
	}
	if len(deps) < 20 || len(deps[module+"gateway"]) == 0 {
		t.Fatalf("go list returned %d packages: the listing is broken", len(deps))
	}
	for _, v := range violations(depRules, deps) {
		t.Error(v)
	}
}

// TestDependencyRulesCatchViolations: the rules above are not vacuous.
func TestDependencyRulesCatchViolations(t *testing.T) {
	deps := map[string][]string{
		module + "gateway":                {module + "apiclient", "github.com/hashicorp/raft"},
		module + "trust/agent":            {module + "controlplane/api/apipb", module + "controlplane/mux"},
		module + "federation/replication": {module + "controlplane/state/statepb", module + "controlplane/state"},
		module + "internal/acceptloop":    {module + "cmd/strait/cli"},
		module + "dns":                    {module + "controlplane/api/apipb"},
	}
	got := violations(depRules, deps)
	want := []string{
		"gateway links github.com/hashicorp/raft",
		"trust/agent links " + module + "controlplane/mux",
		"federation/replication links " + module + "controlplane/state:",
		"internal/acceptloop links " + module + "cmd/strait/cli",
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || strings.Contains(g, w)
		}
		if !found {
			t.Errorf("no violation %q in %q", w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d violations, want %d: %q", len(got), len(want), got)
	}
}
