package cli

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// readmeSection returns the README's section under the heading title.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	b, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, s, ok := strings.Cut(string(b), "\n## "+title+"\n")
	if !ok {
		t.Fatalf("README has no section %q", title)
	}
	s, _, _ = strings.Cut(s, "\n## ")
	return s
}

// configKeys are FileConfig's YAML keys, nested ones dotted.
func configKeys(typ reflect.Type, prefix string) []string {
	var out []string
	for f := range typ.Fields() {
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		if f.Type.Kind() == reflect.Struct {
			out = append(out, configKeys(f.Type, prefix+tag+".")...)
			continue
		}
		out = append(out, prefix+tag)
	}
	return out
}

var (
	backticked = regexp.MustCompile("`([^`]+)`")
	flagName   = regexp.MustCompile(`^--([a-z][a-z-]*)`)
)

// TestReadmeConfigTableMatchesTheCode: every config key is in the README's
// table and every key there exists; each flag the table names is a flag of
// `strait server`.
func TestReadmeConfigTableMatchesTheCode(t *testing.T) {
	sec := readmeSection(t, "Configuration")
	var documented []string
	server, _, err := newRoot(&globals{}).Find([]string{"server"})
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(sec, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, "|")
		for _, m := range backticked.FindAllStringSubmatch(cells[1], -1) {
			documented = append(documented, m[1])
		}
		for _, m := range backticked.FindAllStringSubmatch(cells[2], -1) {
			if f := flagName.FindStringSubmatch(m[1]); f != nil && server.Flags().Lookup(f[1]) == nil {
				t.Errorf("README: %s names the flag --%s, which `strait server` does not have", strings.TrimSpace(cells[1]), f[1])
			}
		}
	}
	keys := configKeys(reflect.TypeFor[FileConfig](), "")
	for _, k := range keys {
		if !slices.Contains(documented, k) {
			t.Errorf("config key %s is not in the README's table", k)
		}
	}
	for _, k := range documented {
		if !slices.Contains(keys, k) {
			t.Errorf("README's table documents %s, which is not a config key", k)
		}
	}
}

// TestReadmeExampleConfigValidates: the README's example config is valid
// once the files it names exist, and until then the error names the key
// and the missing file.
func TestReadmeExampleConfigValidates(t *testing.T) {
	sec := readmeSection(t, "Configuration")
	_, ex, ok := strings.Cut(sec, "Example:\n\n```yaml\n")
	if !ok {
		t.Fatal("README's Configuration section has no example")
	}
	ex, _, _ = strings.Cut(ex, "```")
	dir, write := tempFiles(t)
	m := regexp.MustCompile(`(?m)^join_token_file: (\S+)$`).FindStringSubmatch(ex)
	if m == nil {
		t.Fatalf("the example names no join_token_file:\n%s", ex)
	}
	missing := filepath.Join(dir, "no-such-dir", "join-token")
	code, _, errs := run(t, nil, "config", "validate", write("missing.yaml", strings.Replace(ex, m[1], missing, 1)))
	if code != 1 || !strings.Contains(errs, "join_token_file: file "+missing+" does not exist") {
		t.Fatalf("example with its token file missing: exit %d, %q", code, errs)
	}
	tok := write("join-token", "strait_x.y\n")
	code, out, errs := run(t, nil, "config", "validate", write("example.yaml", strings.Replace(ex, m[1], tok, 1)))
	if code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("README example rejected: exit %d, %q", code, errs)
	}
}

// TestJoinTokenFromAFile: --join-token @FILE reads the token from the file
// (it reaches the join, which finds this one malformed), and a missing
// file is named.
func TestJoinTokenFromAFile(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "tok")
	if err := os.WriteFile(tok, []byte("strait_bogus\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"server", "--site", "dc1", "--node-name", "s2", "--data-dir", filepath.Join(dir, "d"), "--bind-addr", "127.0.0.1:0", "--join", "127.0.0.1:1"}
	env := map[string]string{"STRAIT_JOIN_TOKEN": ""}
	if code, _, errs := run(t, env, append(base, "--join-token", "@"+tok)...); code != 1 || !strings.Contains(errs, "join token is malformed") {
		t.Fatalf("--join-token @file: exit %d %q", code, errs)
	}
	if code, _, errs := run(t, env, append(base, "--join-token", "@"+tok+".gone")...); code != 2 || !strings.Contains(errs, tok+".gone does not exist") {
		t.Fatalf("--join-token @missing: exit %d %q", code, errs)
	}
}
