package modules_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// The modules are checked without a cloud: they are formatted, every
// variable is typed and documented, the README names every variable and
// output, the boot configuration renders from the values the module
// passes and the real binary accepts it, and the boot scripts are valid
// shell. `terraform validate` needs the cloud providers, which an offline
// machine does not have: it runs where they are mirrored locally.

var modules = []string{"aws", "gcp", "azure"}

// examples are values for every variable a module passes to its config
// template, as a deployment would have them.
var examples = map[string]map[string]cty.Value{
	"aws": {
		"region":             cty.StringVal("us-east-1"),
		"kms_key_id":         cty.StringVal("arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
		"bundle_bucket":      cty.StringVal("strait-aws-east-bundle-x"),
		"cloudmap_namespace": cty.StringVal("ecs.internal"),
	},
	"gcp":   {},
	"azure": {},
}

var common = map[string]cty.Value{
	"site":            cty.StringVal("aws-east"),
	"api_port":        cty.NumberIntVal(7400),
	"bundle_port":     cty.NumberIntVal(7401),
	"mesh_domain":     cty.StringVal("mesh"),
	"dns_upstreams":   cty.ListVal([]cty.Value{cty.StringVal("10.0.0.2:53")}),
	"virtual_ip_cidr": cty.StringVal("240.0.0.0/16"),
}

func parseModule(t *testing.T, dir string) []*hclsyntax.Body {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.tf"))
	if err != nil || len(files) == 0 {
		t.Fatalf("%s: no .tf files (%v)", dir, err)
	}
	var bodies []*hclsyntax.Body
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		file, diags := hclsyntax.ParseConfig(src, f, hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatalf("%s: %v", f, diags)
		}
		bodies = append(bodies, file.Body.(*hclsyntax.Body))
	}
	return bodies
}

func literal(t *testing.T, a *hclsyntax.Attribute) string {
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() || v.Type() != cty.String {
		return ""
	}
	return v.AsString()
}

func TestModulesAreDocumented(t *testing.T) {
	for _, m := range modules {
		t.Run(m, func(t *testing.T) {
			readme, err := os.ReadFile(filepath.Join(m, "README.md"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(m, "examples", "basic", "main.tf")); err != nil {
				t.Errorf("no example: %v", err)
			}
			var names []string
			for _, body := range parseModule(t, m) {
				for _, b := range body.Blocks {
					switch b.Type {
					case "variable":
						name := b.Labels[0]
						names = append(names, name)
						if b.Body.Attributes["type"] == nil {
							t.Errorf("variable %q has no type", name)
						}
						if d := b.Body.Attributes["description"]; d == nil || len(literal(t, d)) < 10 {
							t.Errorf("variable %q has no description", name)
						}
					case "output":
						name := b.Labels[0]
						names = append(names, name)
						if d := b.Body.Attributes["description"]; d == nil || len(literal(t, d)) < 10 {
							t.Errorf("output %q has no description", name)
						}
					}
				}
			}
			if len(names) < 10 {
				t.Fatalf("only %d variables and outputs: %v", len(names), names)
			}
			for _, n := range names {
				if !bytes.Contains(readme, []byte("`"+n+"`")) {
					t.Errorf("README does not document `%s`", n)
				}
			}
		})
	}
}

// templateArgs returns the keys of the object a module passes to
// templatefile() for the named template.
func templateArgs(t *testing.T, bodies []*hclsyntax.Body, template string) []string {
	t.Helper()
	var keys []string
	found := false
	for _, body := range bodies {
		hclsyntax.VisitAll(body, func(n hclsyntax.Node) hcl.Diagnostics {
			call, ok := n.(*hclsyntax.FunctionCallExpr)
			if !ok || call.Name != "templatefile" || len(call.Args) != 2 {
				return nil
			}
			path, ok := call.Args[0].(*hclsyntax.TemplateExpr)
			if !ok || !strings.HasSuffix(string(path.Range().SliceBytes(mustRead(t, path.Range().Filename))), "/templates/"+template+`"`) {
				return nil
			}
			obj, ok := call.Args[1].(*hclsyntax.ObjectConsExpr)
			if !ok {
				t.Errorf("templatefile(%s) is not given an object", template)
				return nil
			}
			found = true
			for _, item := range obj.Items {
				k, diags := item.KeyExpr.Value(nil)
				if diags.HasErrors() {
					t.Errorf("templatefile(%s): key %v", template, diags)
					continue
				}
				keys = append(keys, k.AsString())
			}
			return nil
		})
	}
	if !found {
		t.Fatalf("no templatefile() call renders %s", template)
	}
	sort.Strings(keys)
	return keys
}

var files = map[string][]byte{}

func mustRead(t *testing.T, name string) []byte {
	if b, ok := files[name]; ok {
		return b
	}
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	files[name] = b
	return b
}

// render evaluates a template as templatefile() would, with vars.
func render(t *testing.T, path string, vars map[string]cty.Value) string {
	t.Helper()
	expr, diags := hclsyntax.ParseTemplate(mustRead(t, path), path, hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("%s: %v", path, diags)
	}
	ctx := &hcl.EvalContext{Variables: vars, Functions: map[string]function.Function{"jsonencode": stdlib.JSONEncodeFunc}}
	v, diags := expr.Value(ctx)
	if diags.HasErrors() {
		t.Fatalf("render %s: %v", path, diags)
	}
	return v.AsString()
}

func strait(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "strait")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/straitmesh/strait/cmd/strait").CombinedOutput(); err != nil {
		t.Fatalf("build strait: %v\n%s", err, out)
	}
	return bin
}

// TestBootConfigRendersAndValidates renders each module's server config
// with the keys the module passes (and no others) and example values, and
// runs `strait config validate` on it.
func TestBootConfigRendersAndValidates(t *testing.T) {
	bin := strait(t)
	for _, m := range modules {
		t.Run(m, func(t *testing.T) {
			bodies := parseModule(t, m)
			keys := templateArgs(t, bodies, "strait.yaml.tftpl")
			vars := map[string]cty.Value{}
			for _, k := range keys {
				v, ok := examples[m][k]
				if !ok {
					v, ok = common[k]
				}
				if !ok {
					t.Fatalf("no example value for %q, which the module passes to strait.yaml.tftpl", k)
				}
				vars[k] = v
			}
			cfg := render(t, filepath.Join(m, "templates", "strait.yaml.tftpl"), vars)
			file := filepath.Join(t.TempDir(), "strait.yaml")
			if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "config", "validate", file).CombinedOutput()
			if err != nil {
				t.Fatalf("strait config validate rejects the rendered config: %v\n%s\n--- config:\n%s", err, out, cfg)
			}
			if !strings.Contains(cfg, "site: aws-east") || !strings.Contains(cfg, "data_dir:") {
				t.Fatalf("rendered config lacks the site or data_dir:\n%s", cfg)
			}
		})
	}
}

// TestBootScriptsAreValidShell renders each boot script with placeholder
// values for what the module passes and checks it with bash -n.
func TestBootScriptsAreValidShell(t *testing.T) {
	for _, m := range modules {
		t.Run(m, func(t *testing.T) {
			bodies := parseModule(t, m)
			scripts, _ := filepath.Glob(filepath.Join(m, "templates", "*.sh.tftpl"))
			if len(scripts) < 2 {
				t.Fatalf("want server and gateway boot scripts, have %v", scripts)
			}
			for _, s := range scripts {
				vars := map[string]cty.Value{}
				for _, k := range templateArgs(t, bodies, filepath.Base(s)) {
					vars[k] = cty.StringVal("x")
					if strings.HasSuffix(k, "_count") || k == "slot" || strings.HasSuffix(k, "_port") {
						vars[k] = cty.NumberIntVal(3)
					}
				}
				sh := render(t, s, vars)
				cmd := exec.Command("bash", "-n")
				cmd.Stdin = strings.NewReader(sh)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("%s: bash -n: %v\n%s", s, err, out)
				}
			}
		})
	}
}

func terraformBin(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("terraform")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("terraform is required in CI: %v", err)
		}
		t.Skipf("no terraform binary: %v", err)
	}
	return bin
}

func TestModulesAreFormatted(t *testing.T) {
	bin := terraformBin(t)
	cmd := exec.Command(bin, "fmt", "-check", "-recursive", "-diff", "..")
	cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1", "TF_CLI_CONFIG_FILE="+os.DevNull)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("terraform fmt -check: %v\n%s", err, out)
	}
}

// TestModulesValidate runs `terraform validate` on each module where its
// cloud provider is mirrored locally (TF_PROVIDER_MIRROR, a filesystem
// mirror directory); this machine is offline, so it is skipped otherwise.
func TestModulesValidate(t *testing.T) {
	bin := terraformBin(t)
	mirror := os.Getenv("TF_PROVIDER_MIRROR")
	providers := map[string]string{"aws": "hashicorp/aws", "gcp": "hashicorp/google", "azure": "hashicorp/azurerm"}
	for _, m := range modules {
		t.Run(m, func(t *testing.T) {
			if mirror == "" {
				t.Skipf("terraform validate needs the %s provider: set TF_PROVIDER_MIRROR to a filesystem mirror holding it (this machine is offline)", providers[m])
			}
			if _, err := os.Stat(filepath.Join(mirror, "registry.terraform.io", providers[m])); err != nil {
				t.Skipf("terraform validate needs the %s provider, not in %s", providers[m], mirror)
			}
			rc := filepath.Join(t.TempDir(), "terraformrc")
			os.WriteFile(rc, []byte(fmt.Sprintf("provider_installation {\n  filesystem_mirror {\n    path = %q\n  }\n}\n", mirror)), 0o600)
			work := t.TempDir()
			abs, _ := filepath.Abs(m)
			env := append(os.Environ(), "CHECKPOINT_DISABLE=1", "TF_CLI_CONFIG_FILE="+rc, "TF_DATA_DIR="+filepath.Join(work, ".terraform"))
			for _, args := range [][]string{{"init", "-backend=false", "-input=false"}, {"validate"}} {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				cmd := exec.CommandContext(ctx, bin, append([]string{"-chdir=" + abs}, args...)...)
				cmd.Env = env
				out, err := cmd.CombinedOutput()
				cancel()
				if err != nil {
					t.Fatalf("terraform %v: %v\n%s", args, err, out)
				}
			}
		})
	}
}
