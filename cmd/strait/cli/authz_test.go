package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// TestIntentionCLI: `intention allow` prints the API's warnings about
// names it does not know, and `intention check` exits 1 when denied.
func TestIntentionCLI(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "aws-east"})
	env := map[string]string{
		"STRAIT_ADDR":        c.Nodes[0].Addr,
		"STRAIT_TOKEN":       c.Token,
		"STRAIT_CA_FILE":     controlplane.CAFile(c.Nodes[0].Dir),
		"STRAIT_DEV_CONTEXT": filepath.Join(t.TempDir(), "none.json"),
	}
	code, out, errs := run(t, env, "intention", "allow", "--from", "aws-eats", "--to", "payments/api")
	if code != 0 || !strings.Contains(out, "allow aws-eats/*/* -> payments/api") ||
		!strings.Contains(errs, "warning: no peer named aws-eats (yet)") || !strings.Contains(errs, "warning: no service payments/api here (yet)") {
		t.Fatalf("allow with typos: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if code, out, errs = run(t, env, "intention", "check", "--from", "aws-eats/web/front", "--to", "payments/api"); code != 0 || !strings.HasPrefix(out, "allowed") {
		t.Fatalf("check, allowed: exit %d, %q %q", code, out, errs)
	}
	if code, out, errs = run(t, env, "intention", "check", "--from", "gcp-west/web/front", "--to", "payments/api"); code != 1 || !strings.HasPrefix(out, "denied") || !strings.Contains(errs, "denied") {
		t.Fatalf("check, denied: exit %d, %q %q", code, out, errs)
	}
	if code, out, _ = run(t, env, "intention", "check", "--json", "--from", "gcp-west", "--to", "payments/api"); code != 1 || !strings.HasPrefix(strings.TrimSpace(out), "{") {
		t.Fatalf("check --json, denied: exit %d, %q", code, out)
	}
}

// TestJoinTokenSources: daemons read --join-token @FILE, or
// STRAIT_JOIN_TOKEN; a token on the command line still works, with a
// warning that it is visible to the host's users.
func TestJoinTokenSources(t *testing.T) {
	dir, write := tempFiles(t)
	tok := write("tok", "strait_bogus\n")
	empty := write("empty", "\n")
	big := write("big", strings.Repeat("x", maxTokenFile+1))
	base := []string{"server", "--site", "dc1", "--node-name", "s2", "--data-dir", t.TempDir(), "--bind-addr", "127.0.0.1:0", "--join", "127.0.0.1:1"}
	tests := []struct {
		name    string
		env     string
		flag    []string
		code    int
		errs    string
		noWarns bool
	}{
		{"file", "", []string{"--join-token", "@" + tok}, 1, "join token is malformed", true},
		{"environment, a file", "@" + tok, nil, 1, "join token is malformed", true},
		{"environment", "strait_bogus", nil, 1, "join token is malformed", true},
		{"argv", "", []string{"--join-token", "strait_bogus"}, 1, "visible to every user of this host", false},
		{"missing file", "", []string{"--join-token", "@" + filepath.Join(dir, "nope")}, 2, "does not exist", true},
		{"empty file", "", []string{"--join-token", "@" + empty}, 2, "is empty", true},
		{"huge file", "", []string{"--join-token", "@" + big}, 2, "larger than 4096 bytes", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errs := run(t, map[string]string{"STRAIT_JOIN_TOKEN": tt.env}, append(base, tt.flag...)...)
			if code != tt.code || !strings.Contains(errs, tt.errs) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errs, tt.code, tt.errs)
			}
			if tt.noWarns && strings.Contains(errs, "warning:") {
				t.Fatalf("unexpected warning: %q", errs)
			}
		})
	}
}

// TestConfigRefusesShortPropagation: a CA propagation delay shorter than
// three bundle refresh hints is refused, saying why.
func TestConfigRefusesShortPropagation(t *testing.T) {
	_, write := tempFiles(t)
	base := "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\n"
	for _, tt := range []struct{ name, extra, wantErr string }{
		{"short delay", "ca_propagation_delay: 10m\nbundle_refresh_hint: 5m\n", "ca_propagation_delay (10m0s) must be at least three times bundle_refresh_hint (5m0s)"},
		{"long hint", "bundle_refresh_hint: 30m\n", "would"},
		{"three hints", "ca_propagation_delay: 15m\nbundle_refresh_hint: 5m\n", ""},
		{"short delay, hint follows", "ca_propagation_delay: 3s\n", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := run(t, nil, "config", "validate", write(strings.ReplaceAll(tt.name, " ", "_")+".yaml", base+tt.extra))
			if tt.wantErr == "" {
				if code != 0 || !strings.Contains(out, "valid") {
					t.Fatalf("rejected: %d %q", code, errs)
				}
				return
			}
			if code != 1 || !strings.Contains(errs, "refuses this site's certificates") || (tt.wantErr != "would" && !strings.Contains(errs, tt.wantErr)) {
				t.Fatalf("exit %d, stderr %q", code, errs)
			}
		})
	}
}
