package controlplane_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/straitmesh/strait/controlplane"
)

// TestDevSitesGetTheirOwnVirtualIPRange: two dev sites on one host (the
// README's aws-east and gcp-west, and the default "dev") hand out virtual
// IPs from different loopback ranges, the same at every start; an explicit
// range wins.
func TestDevSitesGetTheirOwnVirtualIPRange(t *testing.T) {
	newDev := func(site, cidr string) string {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s, err := controlplane.New(controlplane.Config{Dev: true, Site: site, NodeID: "s0", Listener: ln, VirtualIPCIDR: cidr})
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		return s.VirtualIPCIDR()
	}
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	seen := map[string]string{}
	for _, site := range []string{"aws-east", "gcp-west", "dev", "east", "west", "north"} {
		got := newDev(site, "")
		p, err := netip.ParsePrefix(got)
		if err != nil || p.Bits() != 16 || !loopback.Contains(p.Addr()) || p.Contains(netip.MustParseAddr("127.0.0.1")) {
			t.Fatalf("dev site %s: range %q, want a /16 of loopback without 127.0.0.1", site, got)
		}
		if other, ok := seen[got]; ok {
			t.Fatalf("dev sites %s and %s share %s", other, site, got)
		}
		seen[got] = site
		if again := newDev(site, ""); again != got {
			t.Fatalf("dev site %s: %s, then %s", site, got, again)
		}
	}
	if got := newDev("aws-east", "127.250.0.0/16"); got != "127.250.0.0/16" {
		t.Fatalf("explicit range: got %s", got)
	}
}
