package cli

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// runnable reports whether the shell would run this binary for word (a
// command as printed by a banner).
func runnable(t *testing.T, word string) bool {
	t.Helper()
	p, err := exec.LookPath(strings.Trim(word, "'"))
	if err != nil {
		return false
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a, err1 := os.Stat(p)
	b, err2 := os.Stat(exe)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// TestDemoBannerCommandsRun: every strait command the demo prints names
// this binary in a way the shell finds (no strait on PATH here), and the
// banner shows the way back and how to see denials.
func TestDemoBannerCommandsRun(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	var b bytes.Buffer
	ctx := map[string]string{"aws-east": "/tmp/d/aws-east.json", "gcp-west": "/tmp/d/gcp-west.json"}
	fwd := demoPath{From: "aws-east", To: "gcp-west", DNSAddr: "127.0.0.1:5301", Service: "api", VIP: "127.240.0.1", Port: 8080, GatewayMx: "http://127.0.0.1:9/metrics"}
	rev := demoPath{From: "gcp-west", To: "aws-east", DNSAddr: "127.0.0.1:5302", Service: "web", VIP: "127.241.0.1", Port: 8081}
	writeDemoTry(&b, selfCommand(), ctx, fwd, rev)
	out := b.String()
	var n int
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "STRAIT_DEV_CONTEXT=") {
			continue
		}
		n++
		if !runnable(t, f[1]) {
			t.Errorf("the shell cannot run %q from %q", f[1], line)
		}
	}
	if n < 4 {
		t.Fatalf("%d CLI commands in the banner:\n%s", n, out)
	}
	for _, want := range []string{"--log-level info", "strait_gateway_authorization_denials_total", "The other way, from gcp-west", "dig @127.0.0.1 -p 5302 web.shop.aws-east.mesh", "curl http://127.241.0.1:8081/", "intention allow --from aws-east --to shop/api"} {
		if !strings.Contains(out, want) {
			t.Errorf("banner lacks %q:\n%s", want, out)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{"bin/strait": "bin/strait", "/a b/strait": "'/a b/strait'", "it's": `'it'\''s'`} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}
