// Package awstest runs a real AWS API emulator (moto_server) on loopback
// for tests: one per test binary, started on first use, reset before each
// test that asks for it, and killed with the test binary (Pdeathsig).
package awstest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/straitmesh/strait/cloud/aws"
)

// Region is the region tests use.
const Region = "us-east-1"

var (
	once    sync.Once
	url     string
	started error
	mu      sync.Mutex // one test at a time owns the emulator's state
)

// Start returns a Config pointing every service at a freshly reset
// emulator, with dummy credentials in the environment. Without
// moto_server on the PATH the test fails in CI (CI=true) and is skipped
// elsewhere, saying so.
func Start(t testing.TB) aws.Config {
	t.Helper()
	once.Do(func() { url, started = launch() })
	if started != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the AWS emulator is required in CI: %v", started)
		}
		t.Skipf("no AWS emulator: %v (install moto with its server extra to run this test)", started)
	}
	mu.Lock()
	t.Cleanup(mu.Unlock)
	t.Setenv("AWS_ACCESS_KEY_ID", "testing")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", Region)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	resp, err := http.Post(url+"/moto-api/reset", "application/json", nil)
	if err != nil {
		t.Fatalf("reset the AWS emulator: %v", err)
	}
	resp.Body.Close()
	return aws.Config{Region: Region, Endpoints: map[string]string{"*": url}}
}

func launch() (string, error) {
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		return "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &lockedWriter{w: &out}, &lockedWriter{w: &out}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", port)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if resp, err := http.Get(u + "/moto-api/"); err == nil {
			resp.Body.Close()
			return u, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	return "", fmt.Errorf("moto_server did not answer within 60s; it printed:\n%s", out.String())
}

type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Len() > 1<<20 {
		return len(p), nil
	}
	return l.w.Write(p)
}
