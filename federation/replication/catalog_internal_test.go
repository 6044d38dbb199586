package replication

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/straitmesh/strait/controlplane/state"
)

// The server hands its store to the exporter as is.
var _ Catalog = (*state.Store)(nil)

// TestContractsMatchTheStore: the names this package keeps of its own
// (it does not import the store) are the store's.
func TestContractsMatchTheStore(t *testing.T) {
	if want := (ServiceKey{Namespace: state.GatewayNamespace, Name: state.GatewayService}); gatewayKey != want {
		t.Errorf("gateway key %v, the store's %v", gatewayKey, want)
	}
	for _, q := range [][2]string{{QuotaServices, state.QuotaServices}, {QuotaInstances, state.QuotaInstances}, {QuotaBytes, state.QuotaBytes}} {
		if q[0] != q[1] {
			t.Errorf("quota %q, the store's %q", q[0], q[1])
		}
	}
	var qe quotaExceeded = &state.QuotaError{Quota: state.QuotaBytes}
	if qe.ExceededQuota() != QuotaBytes {
		t.Error("the store's quota error does not name its quota")
	}
}

// TestDoesNotLinkTheStore: the package takes the store as an interface;
// it links neither the state machine nor its format.
func TestDoesNotLinkTheStore(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/straitmesh/strait/controlplane/state") || p == "github.com/hashicorp/raft" {
			t.Errorf("federation/replication depends on %s; give it what it needs through the Catalog interface", p)
		}
	}
}
