package scenarios

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane"
)

// isVirtualIP reports whether ip is from the virtual IP range of the dev
// site s (a loopback /16 derived from its name).
func (s *site) isVirtualIP(ip string) bool {
	a, err := netip.ParseAddr(ip)
	return err == nil && netip.MustParsePrefix(controlplane.DevVirtualIPCIDR(s.name)).Contains(a)
}

// federateAll joins every pair of sites, exports each site's echo service
// to every peer and lets every peer call it.
func (l *lab) federateAll(step int) {
	l.t.Helper()
	l.step(step, "every pair of sites federates with a one-time token")
	for i, a := range l.sites {
		for _, b := range l.sites[i+1:] {
			tok := strings.TrimSpace(a.mustCLI("federation", "token"))
			b.mustCLI("federation", "join", tok)
		}
	}
	l.step(step+1, "each site exports demo/echo to every peer and allows every peer to call it")
	for _, s := range l.sites {
		s.mustCLI("export", "--ns", "demo", "--svc", "echo", "--to", "*")
		for _, p := range l.sites {
			if p != s {
				s.mustCLI("intention", "allow", "--from", p.name, "--to", "demo/echo")
			}
		}
	}
}

// resolve asks site s's mesh DNS for a name, from inside the site.
func (s *site) resolve(name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := s.exec(ctx, s.lab.probe, "-resolve", name, "-dns", s.serverIP+":53")
	ip := strings.TrimSpace(out)
	if err != nil || ip == "" || strings.Contains(ip, "\n") {
		return "", fmt.Errorf("resolve %s: %v %q", name, err, out)
	}
	return ip, nil
}

// call makes a few round trips and new connections to addr from site s.
func (s *site) call(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := s.exec(ctx, s.lab.probe, "-addr", addr, "-rtt", "20", "-conns", "200ms", "-workers", "2")
	if err != nil || !strings.Contains(out, "failed=0") {
		return fmt.Errorf("call %s from %s: %v %s", addr, s.name, err, out)
	}
	return nil
}

// reachEcho waits (up to 60s) until site peer's echo service resolves in
// s and answers a call through the gateways, and returns its address.
func (s *site) reachEcho(peer string) string {
	s.lab.t.Helper()
	var vip string
	waitFor(s.lab.t, 60*time.Second, func() error {
		var err error
		if vip, err = s.resolve("echo.demo." + peer + ".mesh"); err != nil {
			return err
		}
		return s.call(vip + ":7000")
	})
	return vip
}

// TestJoinAndCall: three sites, each its own host, federate with tokens,
// export a service each, and call each other's by DNS name through the
// gateways.
func TestJoinAndCall(t *testing.T) {
	l := newLab(t, "east", "west", "north")
	l.delay = 10 * time.Millisecond
	l.step(1, "start three sites, 10 ms apart (one way): a server (with mesh DNS), a gateway and an echo workload each")
	for _, s := range l.sites {
		s.start()
	}
	l.federateAll(2)
	l.step(4, "from every site, every peer's echo resolves to a local virtual IP and answers through the gateways")
	for _, from := range l.sites {
		for _, to := range l.sites {
			if from == to {
				continue
			}
			name := "echo.demo." + to.name + ".mesh"
			waitFor(t, 60*time.Second, func() error {
				vip, err := from.resolve(name)
				if err != nil {
					return err
				}
				if !from.isVirtualIP(vip) {
					return fmt.Errorf("%s resolves to %s, not a virtual IP", name, vip)
				}
				return from.call(vip + ":7000")
			})
			t.Logf("  %s -> %s: ok", from.name, name)
		}
	}
}

// TestNoFlatNetwork: a workload in one site cannot reach anything of
// another site by IP — not its workloads, not its servers, not its
// gateway's other ports — only its exported services, by name, through
// the gateways.
func TestNoFlatNetwork(t *testing.T) {
	l := newLab(t, "east", "west")
	l.step(1, "start two sites")
	for _, s := range l.sites {
		s.start()
	}
	l.federateAll(2)
	east, west := l.sites[0], l.sites[1]
	l.step(4, "east reaches west's echo by name, through the gateways")
	waitFor(t, 60*time.Second, func() error {
		vip, err := east.resolve("echo.demo.west.mesh")
		if err != nil {
			return err
		}
		return east.call(vip + ":7000")
	})
	l.step(5, "east cannot reach west's workload, server, or gateway host by address")
	for _, addr := range []string{west.workIP + ":7000", west.serverIP + ":7400", west.gatewayIP + ":7400", west.gatewayIP + ":7000"} {
		if err := east.call(addr); err == nil {
			t.Errorf("east reached %s directly: the network is flat", addr)
		} else {
			t.Logf("  east -> %s: unreachable, as it should be", addr)
		}
	}
	l.step(6, "the only port of west that east can open is its gateway's")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := east.exec(ctx, l.probe, "-connect", "-addr", west.gatewayIP+":8443"); err != nil {
		t.Fatalf("west's gateway port is not reachable from east: %v %s", err, out)
	}
}
