package cli

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/straitmesh/strait/agent"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/sitetest"
)

// startAgent runs a real agent "node1" joined to c, and returns its
// Workload API socket path.
func startAgent(t *testing.T, c *controlplanetest.Cluster) string {
	t.Helper()
	return sitetest.StartAgent(t, c, agent.Config{}).Config.SocketPath
}

// TestWorkloadSVIDFetchesAndWrites: `strait workload svid` gets this
// process's SVID from a real agent's Workload API, says what it got, and
// writes the chain, the key (0600) and the bundle; a process with no
// registration is told what to do.
func TestWorkloadSVIDFetchesAndWrites(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "dc1", InMemoryRaft: true})
	socket := startAgent(t, c)
	ctx := controlplanetest.Ctx(t)
	register := func(svc string, uid int) {
		_, err := c.Client(0).Workload.CreateEntry(ctx, &apipb.CreateEntryRequest{Entry: &apipb.WorkloadEntry{
			Namespace: "payments", Service: svc, Agent: "node1",
			Selectors: []*apipb.Selector{{Type: "unix", Key: "uid", Value: strconv.Itoa(uid)}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{"SPIFFE_ENDPOINT_SOCKET": ""}

	// Only another user is registered: this process gets nothing.
	register("other", os.Getuid()+1)
	code, out, errs := run(t, env, "workload", "svid", "--socket", socket, "--timeout", "20s")
	if code != 1 || out != "" || !strings.Contains(errs, "issued no identity") || !strings.Contains(errs, "unix:uid:"+strconv.Itoa(os.Getuid())) {
		t.Fatalf("unregistered: exit %d, %q, %q", code, out, errs)
	}

	register("api", os.Getuid())
	dir := filepath.Join(t.TempDir(), "svid")
	var got svidFetch
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		code, out, errs := run(t, env, "workload", "svid", "--socket", socket, "--write", dir, "--json", "--timeout", "20s")
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, errs)
		}
		return json.Unmarshal([]byte(out), &got)
	})
	if len(got.SVIDs) != 1 || got.SVIDs[0].SpiffeID != "spiffe://dc1.strait/ns/payments/svc/api" || time.Until(got.SVIDs[0].Expires) <= 0 {
		t.Fatalf("svids: %+v", got.SVIDs)
	}
	if len(got.Bundles) != 1 || got.Bundles[0].TrustDomain != "dc1.strait" || got.Bundles[0].File != "bundle.pem" {
		t.Fatalf("bundles: %+v", got.Bundles)
	}
	if len(got.Files) != 3 {
		t.Fatalf("files: %q", got.Files)
	}
	b, err := os.ReadFile(filepath.Join(dir, "svid.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || len(cert.URIs) != 1 || cert.URIs[0].String() != got.SVIDs[0].SpiffeID {
		t.Fatalf("svid.pem: %v %v", cert, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "svid_key.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid_key.pem: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bundle.pem")); err != nil {
		t.Fatal(err)
	}

	// The text form names the identity, its expiry and the files.
	code, out, errs = run(t, env, "workload", "svid", "--socket", "unix://"+socket, "--write", dir)
	if code != 0 || !strings.Contains(out, "SVID spiffe://dc1.strait/ns/payments/svc/api, expires") || !strings.Contains(out, "svid_key.pem") {
		t.Fatalf("text: exit %d, %q, %q", code, out, errs)
	}
}
