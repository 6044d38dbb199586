package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// siteStatusJSON is the part of `strait status --json` scripts rely on.
type siteStatusJSON struct {
	Verdict  string   `json:"verdict"`
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems"`
	Site     string   `json:"site"`
	LeaderID string   `json:"leader_id"`
	Servers  []struct {
		ID        string `json:"id"`
		Address   string `json:"address"`
		Voter     bool   `json:"voter"`
		Reachable bool   `json:"reachable"`
		Error     string `json:"error"`
		Status    *struct {
			State       string `json:"state"`
			SvidExpires string `json:"svid_expires"`
			DNSAddress  string `json:"dns_address"`
		} `json:"status"`
	} `json:"servers"`
	Ca struct {
		Roots []struct {
			Phase string `json:"phase"`
		} `json:"roots"`
	} `json:"ca"`
}

func statusEnv(t *testing.T, c *controlplanetest.Cluster, i int) map[string]string {
	return map[string]string{
		"STRAIT_ADDR":        c.Nodes[i].Addr,
		"STRAIT_TOKEN":       c.Token,
		"STRAIT_CA_FILE":     controlplane.CAFile(c.Nodes[i].Dir),
		"STRAIT_DEV_CONTEXT": filepath.Join(t.TempDir(), "none.json"),
	}
}

func siteStatus(t *testing.T, env map[string]string) (int, siteStatusJSON, string) {
	t.Helper()
	code, out, errs := run(t, env, "status", "--json")
	var st siteStatusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json is not JSON (exit %d, stderr %q): %v\n%s", code, errs, err, out)
	}
	return code, st, errs
}

// TestStatusShowsAStoppedServer: a stopped server is unreachable (not a
// follower), the site degraded while the quorum holds and unhealthy once
// it is lost, and the exit status says so.
func TestStatusShowsAStoppedServer(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{InMemoryRaft: true, DNS: true})
	leader := c.Leader()
	env := statusEnv(t, c, leader)

	code, st, errs := siteStatus(t, env)
	if code != 0 || st.Verdict != "healthy" || !st.Healthy || len(st.Problems) != 0 {
		t.Fatalf("all up: exit %d, verdict %q, problems %q, stderr %q", code, st.Verdict, st.Problems, errs)
	}
	if len(st.Servers) != 3 || len(st.Ca.Roots) == 0 {
		t.Fatalf("all up: %d servers, %d roots", len(st.Servers), len(st.Ca.Roots))
	}
	for _, sv := range st.Servers {
		if !sv.Reachable || sv.Status == nil || sv.Status.SvidExpires == "" || sv.Status.DNSAddress == "" {
			t.Fatalf("server %s: reachable %v, status %+v", sv.ID, sv.Reachable, sv.Status)
		}
	}

	stopped := c.Follower()
	c.Nodes[stopped].Stop()
	code, st, errs = siteStatus(t, env)
	if code != 1 || st.Verdict != "degraded" || st.Healthy {
		t.Fatalf("one server down: exit %d, verdict %q, problems %q", code, st.Verdict, st.Problems)
	}
	// Every field is in the document, false ones too.
	_, raw, _ := run(t, env, "status", "--json")
	if !strings.Contains(raw, `"healthy": false`) || !strings.Contains(raw, `"reachable": false`) {
		t.Fatalf("status --json leaves out false fields:\n%s", raw)
	}
	if !strings.Contains(errs, "is degraded") {
		t.Fatalf("one server down: stderr %q", errs)
	}
	for _, sv := range st.Servers {
		down := sv.ID == c.Nodes[stopped].ID
		if sv.Reachable == down || (down && (sv.Status != nil || sv.Error == "")) {
			t.Fatalf("server %s (stopped: %v): reachable %v, status %+v, error %q", sv.ID, down, sv.Reachable, sv.Status, sv.Error)
		}
	}
	if len(st.Problems) != 1 || !strings.Contains(st.Problems[0], c.Nodes[stopped].ID) || !strings.Contains(st.Problems[0], "unreachable") {
		t.Fatalf("one server down: problems %q", st.Problems)
	}

	// The text form says the same.
	code, out, _ := run(t, env, "status")
	t.Logf("strait status:\n%s", out)
	if code != 1 || !strings.Contains(out, "unreachable") || !strings.Contains(out, "Verdict:   DEGRADED") {
		t.Fatalf("status text: exit %d\n%s", code, out)
	}

	// A second server down: no quorum.
	for i, n := range c.Nodes {
		if i != leader && i != stopped {
			n.Stop()
		}
	}
	code, st, _ = siteStatus(t, env)
	if code != 1 || st.Verdict != "unhealthy" {
		t.Fatalf("two servers down: exit %d, verdict %q, problems %q", code, st.Verdict, st.Problems)
	}
	found := false
	for _, p := range st.Problems {
		found = found || strings.Contains(p, "quorum lost: 1 of 3")
	}
	if !found {
		t.Fatalf("two servers down: problems %q", st.Problems)
	}
}
