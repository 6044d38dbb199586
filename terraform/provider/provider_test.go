package provider_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// The provider, end to end: the real terraform binary, fully offline
// (dev_overrides point it at the provider built here), against two real
// sites started by the test.

type tf struct {
	t   *testing.T
	dir string
	env []string
}

func newTF(t *testing.T) *tf {
	t.Helper()
	if _, err := exec.LookPath("terraform"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("terraform is required in CI: %v", err)
		}
		t.Skipf("no terraform binary: %v", err)
	}
	plugins := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(plugins, "terraform-provider-strait"), "github.com/straitmesh/strait/cmd/terraform-provider-strait")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the provider: %v\n%s", err, out)
	}
	cliConfig := filepath.Join(t.TempDir(), "terraformrc")
	rc := fmt.Sprintf("provider_installation {\n  dev_overrides {\n    \"straitmesh/strait\" = %q\n  }\n  direct {}\n}\n", plugins)
	if err := os.WriteFile(cliConfig, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	return &tf{t: t, dir: t.TempDir(), env: append(os.Environ(),
		"TF_CLI_CONFIG_FILE="+cliConfig, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1", "TF_INPUT=0",
		"TF_PLUGIN_CACHE_DIR=", "STRAIT_ADDR=", "STRAIT_TOKEN=", "STRAIT_CA_FILE=")}
}

// run runs terraform in the working directory; code is its exit status.
func (f *tf) run(args ...string) (string, int) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "terraform", args...)
	cmd.Dir, cmd.Env = f.dir, f.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		f.t.Fatalf("terraform %v: %v", args, err)
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

func (f *tf) mustRun(args ...string) string {
	f.t.Helper()
	out, code := f.run(args...)
	if code != 0 {
		f.t.Fatalf("terraform %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// noDiff asserts that a plan finds nothing to change.
func (f *tf) noDiff(when string) {
	f.t.Helper()
	out, code := f.run("plan", "-detailed-exitcode", "-no-color")
	if code != 0 {
		f.t.Fatalf("%s: the plan is not empty (exit %d):\n%s", when, code, out)
	}
}

func (f *tf) write(main string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, "main.tf"), []byte(main), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

type site struct {
	c      *controlplanetest.Cluster
	cl     *apiclient.Client
	caFile string
}

func startSite(t *testing.T, name string) *site {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: name, BundleEndpoint: true, InMemoryRaft: true})
	return &site{c: c, cl: c.Client(0), caFile: controlplane.CAFile(c.Nodes[0].Dir)}
}

func (s *site) provider(alias string) string {
	return fmt.Sprintf("provider \"strait\" {\n  alias   = %q\n  address = %q\n  token   = %q\n  ca_file = %q\n}\n", alias, s.c.Nodes[0].Addr, s.c.Token, s.caFile)
}

const resources = `
resource "strait_federation_token" "a_for_b" {
  provider = strait.a
  peer     = "site-b"
}

resource "strait_peering" "b_to_a" {
  provider = strait.b
  token    = strait_federation_token.a_for_b.token
}

resource "strait_export" "api" {
  provider   = strait.a
  namespace  = "payments"
  service    = "api"
  to         = ["site-b"]
  depends_on = [strait_peering.b_to_a]
}

resource "strait_intention" "web_to_api" {
  provider    = strait.a
  source      = "site-b/payments/web"
  destination = "payments/api"
  action      = "%s"
  description = "%s"
}

resource "strait_acl_token" "ci" {
  provider    = strait.a
  kind        = "read"
  description = "%s"
}
`

func TestProviderEndToEnd(t *testing.T) {
	f := newTF(t)
	a, b := startSite(t, "site-a"), startSite(t, "site-b")
	ctx := controlplanetest.Ctx(t)
	providers := "terraform {\n  required_providers {\n    strait = { source = \"straitmesh/strait\" }\n  }\n}\n" + a.provider("a") + b.provider("b")

	// 1. Apply: a peering, an export, an intention and a token.
	f.write(providers + fmt.Sprintf(resources, "allow", "web calls api", "ci"))
	f.mustRun("apply", "-auto-approve", "-no-color")
	peers, err := b.cl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
	if err != nil || len(peers.Peers) != 1 || peers.Peers[0].Name != "site-a" {
		t.Fatalf("site-b's peers: %v %v", peers, err)
	}
	exports, err := a.cl.Federation.ListExports(ctx, &apipb.ListExportsRequest{})
	if err != nil || len(exports.Exports) != 1 || fmt.Sprint(exports.Exports[0].To) != "[site-b]" {
		t.Fatalf("site-a's exports: %v %v", exports, err)
	}
	intention := func() *apipb.Intention {
		t.Helper()
		l, err := a.cl.Intentions.List(ctx, &apipb.ListIntentionsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range l.Intentions {
			if in.Source == "site-b/payments/web" && in.Destination == "payments/api" {
				return in
			}
		}
		return nil
	}
	if in := intention(); in == nil || in.Action != apipb.IntentionAction_INTENTION_ACTION_ALLOW || in.Description != "web calls api" {
		t.Fatalf("intention: %v", in)
	}
	// The token works, and its secret is marked sensitive in state.
	var state struct {
		Values struct {
			RootModule struct {
				Resources []struct {
					Address         string         `json:"address"`
					Values          map[string]any `json:"values"`
					SensitiveValues map[string]any `json:"sensitive_values"`
				} `json:"resources"`
			} `json:"root_module"`
		} `json:"values"`
	}
	if err := json.Unmarshal([]byte(f.mustRun("show", "-json")), &state); err != nil {
		t.Fatal(err)
	}
	var secret, accessor string
	for _, r := range state.Values.RootModule.Resources {
		switch r.Address {
		case "strait_acl_token.ci":
			secret, _ = r.Values["secret"].(string)
			accessor, _ = r.Values["id"].(string)
			if r.SensitiveValues["secret"] != true {
				t.Error("the token's secret is not marked sensitive")
			}
		case "strait_federation_token.a_for_b", "strait_peering.b_to_a":
			if r.SensitiveValues["token"] != true {
				t.Errorf("%s: token not marked sensitive", r.Address)
			}
		}
	}
	ro := a.c.ClientWithToken(0, secret)
	if _, err := ro.Federation.ListExports(ctx, &apipb.ListExportsRequest{}); err != nil {
		t.Fatalf("the read token from terraform does not read: %v", err)
	}
	f.noDiff("after apply")

	// 2. Change: the intention flips to deny; the token is replaced.
	f.write(providers + fmt.Sprintf(resources, "deny", "not any more", "ci-2"))
	f.mustRun("apply", "-auto-approve", "-no-color")
	if in := intention(); in == nil || in.Action != apipb.IntentionAction_INTENTION_ACTION_DENY || in.Description != "not any more" {
		t.Fatalf("intention after change: %v", in)
	}
	toks, err := a.cl.ACL.ListTokens(ctx, &apipb.ListTokensRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks.Tokens {
		if tk.AccessorId == accessor {
			t.Fatal("the replaced token was not revoked")
		}
	}
	f.noDiff("after change")

	// 3. Import: forget the export, the intention and the peering, then
	// import them back; the plan is empty again (the peering's token,
	// which the site never reveals, is recorded without touching it).
	f.mustRun("state", "rm", "strait_export.api", "strait_intention.web_to_api", "strait_peering.b_to_a")
	if out, code := f.run("import", "-no-color", "strait_intention.web_to_api", "no-comma"); code == 0 || !strings.Contains(out, "want source,destination") {
		t.Fatalf("a bad import ID: exit %d\n%s", code, out)
	}
	f.mustRun("import", "-no-color", "strait_export.api", "payments/api")
	f.mustRun("import", "-no-color", "strait_intention.web_to_api", "site-b/payments/web,payments/api")
	f.mustRun("import", "-no-color", "strait_peering.b_to_a", "site-a")
	out := f.mustRun("plan", "-no-color")
	if strings.Contains(out, "must be replaced") || !strings.Contains(out, "0 to add, 1 to change, 0 to destroy") {
		t.Fatalf("the plan after import replaces something:\n%s", out)
	}
	f.mustRun("apply", "-auto-approve", "-no-color")
	f.noDiff("after import")

	// 4. Destroy: everything is gone from both sites.
	f.mustRun("destroy", "-auto-approve", "-no-color")
	exports, _ = a.cl.Federation.ListExports(ctx, &apipb.ListExportsRequest{})
	if len(exports.GetExports()) != 0 {
		t.Fatalf("exports left: %v", exports)
	}
	if in := intention(); in != nil {
		t.Fatalf("intention left: %v", in)
	}
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		for _, s := range []*site{a, b} {
			p, err := s.cl.Federation.List(ctx, &apipb.ListPeersFedRequest{})
			if err != nil {
				return err
			}
			if len(p.Peers) != 0 {
				return fmt.Errorf("peers left: %v", p.Peers)
			}
		}
		return nil
	})
	toks, _ = a.cl.ACL.ListTokens(ctx, &apipb.ListTokensRequest{})
	if slices.ContainsFunc(toks.GetTokens(), func(tk *apipb.Token) bool { return strings.HasPrefix(tk.Description, "ci") }) {
		t.Fatal("the ACL token was not revoked")
	}
}

func TestProviderRejectsBadConfig(t *testing.T) {
	f := newTF(t)
	a := startSite(t, "site-a")
	providers := "terraform {\n  required_providers {\n    strait = { source = \"straitmesh/strait\" }\n  }\n}\n" + a.provider("a")
	for _, tt := range []struct{ body, want string }{
		{`resource "strait_intention" "x" {
  provider = strait.a
  source = "site-b"
  destination = "payments/api"
  action = "maybe"
}`, "value must be one of"},
		{`resource "strait_federation_token" "x" {
  provider = strait.a
  ttl = "soon"
}`, "is not a positive duration"},
		{`resource "strait_export" "x" {
  provider = strait.a
  namespace = "payments"
  service = "api"
  to = ["nobody"]
}`, "nobody"},
	} {
		f.write(providers + tt.body)
		out, code := f.run("apply", "-auto-approve", "-no-color")
		if code == 0 || !strings.Contains(out, tt.want) {
			t.Errorf("exit %d, want an error with %q:\n%s", code, tt.want, out)
		}
	}
}
