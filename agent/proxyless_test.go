package agent_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/proxyless"
)

// TestProxylessFilesFromTheAgent: the files a proxyless gRPC client reads
// come from a real agent's Workload API: the workload's SVID, its key
// (0600), and a bundle map holding the site's trust domain.
func TestProxylessFilesFromTheAgent(t *testing.T) {
	s := startSite(t)
	s.register(t, "front", "node1", uidSel(os.Getuid()))
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan *x509svid.SVID, 1)
	err := proxyless.Keep(ctx, "unix://"+s.socket, dir, func(sv *x509svid.SVID) {
		select {
		case got <- sv:
		default:
		}
		cancel()
	})
	if err != nil {
		t.Fatal(err)
	}
	var sv *x509svid.SVID
	select {
	case sv = <-got:
	default:
		t.Fatal("no files written before the deadline")
	}
	if sv.ID != workloadID("front") {
		t.Fatalf("wrote %s", sv.ID)
	}
	onDisk, err := x509svid.Load(filepath.Join(dir, proxyless.SVIDFile), filepath.Join(dir, proxyless.KeyFile))
	if err != nil || onDisk.ID != sv.ID {
		t.Fatalf("the files do not hold the SVID: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, proxyless.KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o", fi.Mode().Perm())
	}
	var m struct {
		TrustDomains map[string]json.RawMessage `json:"trust_domains"`
	}
	b, err := os.ReadFile(filepath.Join(dir, proxyless.BundlesFile))
	if err != nil || json.Unmarshal(b, &m) != nil || m.TrustDomains["dc1.strait"] == nil {
		t.Fatalf("bundle map %s: %v", b, err)
	}
	boot, err := proxyless.Bootstrap([]string{s.c.Nodes[0].Addr}, "gateway/pretend", dir)
	if err == nil {
		t.Fatalf("a gateway node ID was accepted: %s", boot)
	}
}
