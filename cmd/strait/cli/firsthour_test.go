package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestFirstHourAgainstARealSite covers what a newcomer met in the first
// hour against a real one-server site: ca status times, several --addr,
// the confirmation of every write, and connection errors said as what to
// check.
func TestFirstHourAgainstARealSite(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{})
	n := c.Nodes[0]
	caFile := controlplane.CAFile(n.Dir)
	env := map[string]string{
		"STRAIT_ADDR":        n.Addr,
		"STRAIT_TOKEN":       c.Token,
		"STRAIT_CA_FILE":     caFile,
		"STRAIT_DEV_CONTEXT": filepath.Join(t.TempDir(), "none.json"),
	}

	t.Run("ca status shows when the bootstrap root became active", func(t *testing.T) {
		code, out, errs := run(t, env, "ca", "status")
		if code != 0 || strings.Contains(out, "1970") {
			t.Fatalf("ca status: %d %q %q", code, out, errs)
		}
		code, out, _ = run(t, env, "ca", "status", "--json")
		var st struct {
			Roots []struct {
				Phase string
				Since time.Time
			}
		}
		if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || len(st.Roots) != 1 {
			t.Fatalf("ca status --json: %d %v %s", code, err, out)
		}
		if since := st.Roots[0].Since; time.Since(since) > time.Hour || time.Until(since) > time.Minute {
			t.Fatalf("active root since %s, want about now", since)
		}
	})

	t.Run("several addresses, the first unreachable", func(t *testing.T) {
		code, out, errs := run(t, env, "--addr", closedPort(t)+","+n.Addr, "status")
		if code != 0 || !strings.Contains(out, "leader") {
			t.Fatalf("status over a fallback address: %d %q %q", code, out, errs)
		}
	})

	t.Run("a bare host gets the API port", func(t *testing.T) {
		// Nothing listens on 127.0.0.1:7400 in tests (servers bind port
		// 0), so the error names the address the host was completed to.
		code, _, errs := run(t, env, "--addr", "127.0.0.1", "--timeout", "5s", "status")
		if code != 1 || !strings.Contains(errs, "127.0.0.1:7400") || strings.Contains(errs, ":443") {
			t.Fatalf("--addr 127.0.0.1: %d %q", code, errs)
		}
	})

	t.Run("every write says what it did", func(t *testing.T) {
		steps := []struct {
			args []string
			want string
		}{
			{[]string{"service", "register", "--ns", "payments", "--svc", "api", "--port", "http=8080/http", "--address", "10.0.0.5", "--id", "api-1", "--ttl", "1m"}, "Registered service payments/api, instance api-1 (10.0.0.5)"},
			{[]string{"service", "register", "--ns", "payments", "--name", "web"}, "Registered service payments/web"},
			{[]string{"service", "heartbeat", "--ns", "payments", "--svc", "api", "--id", "api-1"}, "Heartbeat recorded for instance api-1 of service payments/api"},
			{[]string{"service", "deregister", "--ns", "payments", "--svc", "api", "--id", "api-1"}, "Deregistered instance api-1 of service payments/api"},
			{[]string{"service", "deregister", "--ns", "payments", "--svc", "web"}, "Deregistered service payments/web and its instances"},
			{[]string{"intention", "allow", "--from", "other", "--to", "payments/api"}, "allow other/*/* -> payments/api"},
			{[]string{"intention", "delete", "--from", "other", "--to", "payments/api"}, "Deleted the intention other -> payments/api"},
			{[]string{"workload", "register", "--ns", "payments", "--svc", "api", "--agent", "*", "--selector", "unix:uid:1001"}, "Registered entry"},
		}
		for _, s := range steps {
			code, out, errs := run(t, env, s.args...)
			if code != 0 || !strings.Contains(out, s.want) {
				t.Fatalf("%v: %d %q %q; want %q", s.args, code, out, errs, s.want)
			}
		}
	})

	t.Run("strait dns says where it listens", func(t *testing.T) {
		for k, v := range env {
			t.Setenv(k, v)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var out, errs syncBuffer
		done := make(chan int, 1)
		go func() { done <- execute(ctx, []string{"dns", "--listen", "127.0.0.1:0"}, &out, &errs) }()
		controlplanetest.WaitFor(t, 30*time.Second, func() error {
			select {
			case code := <-done:
				t.Fatalf("dns exited %d: %s", code, errs.String())
			default:
			}
			if !strings.Contains(errs.String(), "Mesh DNS of site test on 127.0.0.1:") {
				return fmt.Errorf("stderr %q", errs.String())
			}
			return nil
		})
		cancel()
		if code := <-done; code != 0 {
			t.Fatalf("dns exited %d: %s", code, errs.String())
		}
	})

	t.Run("version --json", func(t *testing.T) {
		code, out, _ := run(t, nil, "version", "--json")
		var v struct{ Version string }
		if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.Version == "" {
			t.Fatalf("version --json: %d %q %v", code, out, err)
		}
	})

	t.Run("connection errors say what to check", func(t *testing.T) {
		other := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "other"})
		twin := controlplanetest.Start(t, 1, controlplanetest.Options{}) // the same trust domain, another CA
		plain := httptest.NewServer(http.NotFoundHandler())
		defer plain.Close()
		silent, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		go func() {
			for {
				conn, err := silent.Accept()
				if err != nil {
					return
				}
				defer conn.Close() // held open, never answered
			}
		}()
		down := closedPort(t)
		tests := []struct {
			name string
			args []string
			want []string
		}{
			{"server down", []string{"--addr", down}, []string{"no server at " + down, "is `strait server` running there? check --addr", "detail: ", "connection refused"}},
			{"another site's server", []string{"--addr", other.Nodes[0].Addr}, []string{"belongs to trust domain other.strait, but the CA you gave is test.strait's", "check --ca-file", "detail: "}},
			{"same trust domain, another CA", []string{"--addr", twin.Nodes[0].Addr}, []string{"the server's certificate at " + twin.Nodes[0].Addr + " is not from this site's CA", "check --ca-file", "detail: "}},
			{"not TLS", []string{"--addr", strings.TrimPrefix(plain.URL, "http://")}, []string{"does not speak the API's TLS", "check --addr", "detail: "}},
			{"no answer", []string{"--addr", silent.Addr().String(), "--timeout", "2s"}, []string{"no answer from " + silent.Addr().String() + " within --timeout", "detail: "}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, _, errs := run(t, env, append(tt.args, "service", "list")...)
				if code != 1 {
					t.Fatalf("exit %d %q", code, errs)
				}
				for _, w := range tt.want {
					if !strings.Contains(errs, w) {
						t.Fatalf("stderr %q lacks %q", errs, w)
					}
				}
			})
		}
	})
}

// completions runs the shell's completion request and returns the names.
func completions(t *testing.T, env map[string]string, args ...string) []string {
	t.Helper()
	code, out, errs := run(t, env, append([]string{"__complete"}, args...)...)
	if code != 0 {
		t.Fatalf("__complete %v: %d %q", args, code, errs)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" && !strings.HasPrefix(l, ":") {
			names = append(names, strings.SplitN(l, "\t", 2)[0])
		}
	}
	return names
}

// TestCompletionFromTheSite: completion offers the site's peers,
// namespaces and services, asked of a real server; with no server it
// offers nothing, and says nothing.
func TestCompletionFromTheSite(t *testing.T) {
	site := func(name string) *controlplanetest.Cluster {
		return controlplanetest.Start(t, 1, controlplanetest.Options{Site: name, BundleEndpoint: true})
	}
	a, b := site("aws-east"), site("gcp-west")
	envOf := func(c *controlplanetest.Cluster) map[string]string {
		return map[string]string{
			"STRAIT_ADDR":        c.Nodes[0].Addr,
			"STRAIT_TOKEN":       c.Token,
			"STRAIT_CA_FILE":     controlplane.CAFile(c.Nodes[0].Dir),
			"STRAIT_DEV_CONTEXT": filepath.Join(t.TempDir(), "none.json"),
		}
	}
	envA, envB := envOf(a), envOf(b)
	code, tok, errs := run(t, envA, "federation", "token", "--peer", "gcp")
	if code != 0 {
		t.Fatalf("federation token: %d %q", code, errs)
	}
	if code, out, errs := run(t, envB, "federation", "join", strings.TrimSpace(tok)); code != 0 {
		t.Fatalf("federation join: %d %q %q", code, out, errs)
	}
	for _, s := range [][]string{{"payments", "api"}, {"payments", "web"}, {"shop", "db"}} {
		if code, _, errs := run(t, envA, "service", "register", "--ns", s[0], "--svc", s[1]); code != 0 {
			t.Fatalf("register %v: %q", s, errs)
		}
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"service", "show", "--ns", ""}, "payments shop"},
		{[]string{"service", "show", "--ns", "payments", "--svc", ""}, "api web"},
		{[]string{"export", "--ns", "shop", "--svc", ""}, "db"},
		{[]string{"service", "deregister", "--ns", "payments", "--svc", "w"}, "web"},
		{[]string{"export", "--to", ""}, "gcp"},
		{[]string{"federation", "show", ""}, "gcp"},
		{[]string{"federation", "show", "gcp", ""}, ""},
		{[]string{"intention", "allow", "--from", ""}, "gcp-west"},
		{[]string{"intention", "allow", "--to", "shop/"}, "shop/* shop/db"},
		{[]string{"token", "create", "--kind", ""}, "management write read server agent gateway"},
		{[]string{"operator", "raft", "remove-peer", ""}, a.Nodes[0].ID},
	}
	for _, tt := range tests {
		if got := strings.Join(completions(t, envA, tt.args...), " "); got != tt.want {
			t.Errorf("complete %q: %q, want %q", tt.args, got, tt.want)
		}
	}
	// No server: nothing, and no error.
	if got := completions(t, envA, "federation", "show", "--addr", closedPort(t), ""); len(got) != 0 {
		t.Errorf("with no server: %q", got)
	}
}
