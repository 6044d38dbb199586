package cli

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// syncBuffer is a bytes.Buffer a running server writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// devServer is `strait server --dev` run in-process until stop.
type devServer struct {
	out, errs syncBuffer
	stop      context.CancelFunc
	done      chan int
	once      sync.Once
}

func startDevServer(t *testing.T, site string) *devServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &devServer{stop: cancel, done: make(chan int, 1)}
	go func() {
		d.done <- execute(ctx, []string{"server", "--dev", "--site", site, "--node-name", site + "-s1", "--bind-addr", "127.0.0.1:0", "--metrics-addr", "", "--dns-addr", ""}, &d.out, &d.errs)
	}()
	t.Cleanup(func() { d.shutdown(t) })
	controlplanetest.WaitFor(t, 60*time.Second, func() error {
		if !strings.Contains(d.out.String(), "Strait dev server running") {
			return fmt.Errorf("no banner yet; stderr: %s", d.errs.String())
		}
		return nil
	})
	return d
}

func (d *devServer) shutdown(t *testing.T) {
	t.Helper()
	d.once.Do(func() {
		d.stop()
		select {
		case code := <-d.done:
			if code != 0 {
				t.Errorf("dev server exited %d: %s", code, d.errs.String())
			}
		case <-time.After(60 * time.Second):
			t.Error("dev server did not stop")
		}
	})
}

// statusSite is the site `strait status` reaches with no flags set.
func statusSite(t *testing.T) string {
	t.Helper()
	code, out, errs := run(t, nil, "status", "--json")
	if code != 0 {
		return "error: " + errs
	}
	for line := range strings.SplitSeq(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), `"site": "`); ok {
			return strings.TrimSuffix(v, `",`)
		}
	}
	return "no site in " + out
}

// TestTwoDevServersInOneHome: a second dev server in the same HOME takes
// the CLI over while it runs and, when it stops, leaves the first one's
// context in place, so the CLI finds the first one again. A normal start
// logs no ERROR and no raw format verb.
func TestTwoDevServersInOneHome(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", home+"/.config")
	for _, k := range []string{"STRAIT_DEV_CONTEXT", "STRAIT_ADDR", "STRAIT_TOKEN", "STRAIT_CA_FILE"} {
		t.Setenv(k, "")
	}
	t.Setenv("PATH", t.TempDir()) // no strait on PATH: the banner must say how to run this one
	one := startDevServer(t, "one")
	try, _, _ := strings.Cut(strings.SplitN(one.out.String(), "Try:\n", 2)[1], "\n")
	if f := strings.Fields(try); len(f) < 2 || !runnable(t, f[0]) {
		t.Errorf("the dev banner's first command %q does not run", try)
	}
	if got := statusSite(t); got != "one" {
		t.Fatalf("with one dev server, status reached %q", got)
	}
	two := startDevServer(t, "two")
	if got := statusSite(t); got != "two" {
		t.Fatalf("with a second dev server, status reached %q", got)
	}
	two.shutdown(t)
	if got := statusSite(t); got != "one" {
		t.Fatalf("after the second dev server stopped, status reached %q, want the first", got)
	}
	for _, d := range []*devServer{one, two} {
		logs := d.errs.String()
		if strings.Contains(logs, "level=ERROR") || strings.Contains(logs, "%+v") {
			t.Errorf("a normal start and stop logged an error or a format verb:\n%s", logs)
		}
	}
	one.shutdown(t)
	if code, _, errs := run(t, nil, "status"); code != 1 || !strings.Contains(errs, "strait server --dev") {
		t.Fatalf("with no dev server left: %d %q", code, errs)
	}
}
