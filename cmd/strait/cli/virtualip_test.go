package cli

import (
	"strings"
	"testing"
)

// TestServerTakesVirtualIPCIDR: --virtual-ip-cidr reaches the server's
// configuration (a range too small is refused, naming the setting).
func TestServerTakesVirtualIPCIDR(t *testing.T) {
	code, _, errs := run(t, nil, "server", "--dev", "--site", "one", "--bind-addr", "127.0.0.1:0", "--virtual-ip-cidr", "127.250.0.0/30")
	if code != 1 || !strings.Contains(errs, "virtual_ip_cidr") || !strings.Contains(errs, "127.250.0.0/30") {
		t.Fatalf("--virtual-ip-cidr 127.250.0.0/30: exit %d, %q", code, errs)
	}
}
