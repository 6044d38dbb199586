package strait_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"slices"
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
		from: []string{"gateway/...", "dns/...", "agent/...", "apiclient/...", "proxyless/...",
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
		banned: []string{"controlplane", "controlplane/api", "controlplane/state", "github.com/hashicorp/raft/..."},
		why:    "federation/ gets consensus and state through interfaces it declares",
	},
	{
		from: []string{"internal/...", "meshname/...", "policy/...", "trust/...", "federation/...", "dns/...", "sitetest/...", "terraform/...",
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

// pkgInfo is what go list says of one package of the module.
type pkgInfo struct {
	imports []string // direct
	deps    []string // transitive
}

// violations returns, per package and broken rule, one line naming the
// first banned package it links and the import chain that brings it in.
func violations(rules []depRule, pkgs map[string]pkgInfo) []string {
	var out []string
	for pkg, info := range pkgs {
		for _, r := range rules {
			if !matchesAny(r.from, pkg) {
				continue
			}
			var bad []string
			for _, d := range info.deps {
				if d != pkg && matchesAny(r.banned, d) && !matchesAny(r.allowed, d) {
					bad = append(bad, d)
				}
			}
			if len(bad) == 0 {
				continue
			}
			slices.Sort(bad)
			line := fmt.Sprintf("%s links %s (via %s)", short(pkg), short(bad[0]), strings.Join(chain(pkgs, pkg, bad[0]), " -> "))
			if len(bad) > 1 {
				line += fmt.Sprintf(" and %d more banned packages", len(bad)-1)
			}
			out = append(out, line+": "+r.why)
		}
	}
	slices.Sort(out)
	return out
}

// chain is the path of direct imports from pkg to dep, as far as the
// module's packages tell it.
func chain(pkgs map[string]pkgInfo, pkg, dep string) []string {
	path := []string{short(pkg)}
	for cur := pkg; cur != dep && len(path) < 32; {
		next := ""
		for _, imp := range pkgs[cur].imports {
			if imp == dep || slices.Contains(pkgs[imp].deps, dep) {
				next = imp
				break
			}
		}
		if next == "" {
			break
		}
		path = append(path, short(next))
		cur = next
	}
	return path
}

func short(p string) string { return strings.TrimPrefix(p, module) }

// TestDependencyRules fails when a package starts linking what
// docs/architecture.md says it must not (as Tailscale's deptest does).
func TestDependencyRules(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}|{{join .Imports \" \"}}|{{join .Deps \" \"}}", "./...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	pkgs := map[string]pkgInfo{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		f := strings.Split(sc.Text(), "|")
		if len(f) == 3 {
			pkgs[f[0]] = pkgInfo{imports: strings.Fields(f[1]), deps: strings.Fields(f[2])}
		}
	}
	if len(pkgs) < 20 || len(pkgs[module+"gateway"].deps) == 0 {
		t.Fatalf("go list returned %d packages: the listing is broken", len(pkgs))
	}
	for _, v := range violations(depRules, pkgs) {
		t.Error(v)
	}
}

// TestDependencyRulesCatchViolations: the rules above are not vacuous,
// and a violation names the import chain that brings the banned package in.
func TestDependencyRulesCatchViolations(t *testing.T) {
	m := module
	pkgs := map[string]pkgInfo{
		m + "gateway":                {imports: []string{m + "apiclient"}, deps: []string{m + "apiclient", "github.com/hashicorp/raft"}},
		m + "apiclient":              {imports: []string{"github.com/hashicorp/raft"}, deps: []string{"github.com/hashicorp/raft"}},
		m + "trust/enroll":           {deps: []string{m + "controlplane/api/apipb", m + "controlplane/mux"}},
		m + "federation/replication": {deps: []string{m + "controlplane/state/statepb", m + "controlplane/state"}},
		m + "internal/acceptloop":    {deps: []string{m + "cmd/strait/cli"}},
		m + "dns":                    {deps: []string{m + "controlplane/api/apipb"}},
	}
	got := violations(depRules, pkgs)
	want := []string{
		"apiclient links github.com/hashicorp/raft (via apiclient -> github.com/hashicorp/raft)",
		"federation/replication links controlplane/state (",
		"gateway links github.com/hashicorp/raft (via gateway -> apiclient -> github.com/hashicorp/raft)",
		"internal/acceptloop links cmd/strait/cli",
		"trust/enroll links controlplane/mux",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d violations, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("violation %d = %q, want it to start with %q", i, got[i], w)
		}
	}
}
