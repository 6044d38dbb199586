package scenarios

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// callLoop calls addr from s over and over until stopped, counting
// failures (each call: a few round trips and new connections).
func (s *site) callLoop(addr string) (stop func() (ok, failed int)) {
	var okN, failN atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := s.call(addr); err != nil {
				failN.Add(1)
				s.lab.t.Logf("  call %s failed: %v", addr, err)
			} else {
				okN.Add(1)
			}
		}
	}()
	return func() (int, int) {
		close(done)
		wg.Wait()
		return int(okN.Load()), int(failN.Load())
	}
}

// wanLink is the WAN side of site s's link (down: the site is cut off).
func (s *site) setWAN(up bool) {
	state := "down"
	if up {
		state = "up"
	}
	run(s.lab.t, "ip", "-n", s.lab.wan, "link", "set", fmt.Sprintf("w%s%d", s.lab.id, s.index), state)
}

// TestWANPartition: the WAN between two sites is cut for a while. Local
// traffic is unaffected, the imported name keeps answering (marked
// stale), and everything converges after the heal with nobody acting.
func TestWANPartition(t *testing.T) {
	l := newLab(t, "east", "west")
	l.step(1, "start two sites whose servers mark imports stale after 2s without contact")
	for _, s := range l.sites {
		s.configure("peer_heartbeat: 200ms\npeer_stale_after: 2s\n")
		s.start()
	}
	l.federateAll(2)
	east, west := l.sites[0], l.sites[1]
	var vip string
	waitFor(t, 60*time.Second, func() error {
		var err error
		if vip, err = east.resolve("echo.demo.west.mesh"); err != nil {
			return err
		}
		return east.call(vip + ":7000")
	})
	l.step(4, "cut west off the WAN")
	west.setWAN(false)
	l.step(5, "east's own service still answers locally, by name")
	waitFor(t, 10*time.Second, func() error {
		ip, err := east.resolve("echo.demo.east.mesh")
		if err != nil {
			return err
		}
		return east.call(ip + ":7000")
	})
	l.step(6, "west's service keeps its name in east (last known), marked stale")
	waitFor(t, 30*time.Second, func() error {
		out, err := east.cli("federation", "list")
		if err != nil || !strings.Contains(out, "stale") {
			return fmt.Errorf("not stale yet: %v %s", err, out)
		}
		return nil
	})
	if got, err := east.resolve("echo.demo.west.mesh"); err != nil || got != vip {
		t.Fatalf("imported name during the partition: %q %v, want the last known %s", got, err, vip)
	}
	l.step(7, "heal: calls go through again and the peering is active, with nobody acting")
	west.setWAN(true)
	waitFor(t, 60*time.Second, func() error { return east.call(vip + ":7000") })
	waitFor(t, 60*time.Second, func() error {
		out, err := east.cli("federation", "list")
		if err != nil || !strings.Contains(out, "active") {
			return fmt.Errorf("not active yet: %v %s", err, out)
		}
		return nil
	})
}

// TestGatewayLoss: west runs two gateways; one is killed while east calls
// west's service; traffic moves to the other.
func TestGatewayLoss(t *testing.T) {
	l := newLab(t, "east", "west")
	l.step(1, "start two sites; west with a second gateway")
	for _, s := range l.sites {
		s.start()
	}
	east, west := l.sites[0], l.sites[1]
	second := west.addGateway("west-gw2", fmt.Sprintf("10.77.0.%d", 30+west.index))
	l.federateAll(2)
	var vip string
	waitFor(t, 60*time.Second, func() error {
		var err error
		if vip, err = east.resolve("echo.demo.west.mesh"); err != nil {
			return err
		}
		out, err := east.cli("federation", "show", "west")
		if err != nil || !strings.Contains(out, second.addr) {
			return fmt.Errorf("east does not know west's second gateway yet: %v", err)
		}
		return east.call(vip + ":7000")
	})
	l.step(4, "call west from east in a loop, and kill west's first gateway (SIGKILL)")
	stop := east.callLoop(vip + ":7000")
	time.Sleep(time.Second)
	west.gateway.kill()
	time.Sleep(3 * time.Second)
	ok, failed := stop()
	l.step(5, "%d calls succeeded, %d failed (calls in flight on the killed gateway may)", ok, failed)
	if ok == 0 || failed > 2 {
		t.Fatalf("%d calls ok, %d failed across the loss of one of two gateways", ok, failed)
	}
	l.step(6, "new calls all succeed on the remaining gateway")
	for range 5 {
		if err := east.call(vip + ":7000"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSiteFailover: east's own echo fails; clients using the failover
// name echo.demo.mesh reach west's copy through the gateways, and come
// back to east's when it recovers.
func TestSiteFailover(t *testing.T) {
	l := newLab(t, "east", "west")
	l.step(1, "start two sites; east's echo is registered with a 2s TTL")
	for _, s := range l.sites {
		s.start()
	}
	east, west := l.sites[0], l.sites[1]
	l.federateAll(2)
	east.mustCLI("service", "register", "--ns", "demo", "--name", "echo", "--port", "tcp=7000/tcp", "--address", east.workIP, "--id", "echo-1", "--ttl", "2s")
	heartbeat := func() { east.mustCLI("service", "heartbeat", "--ns", "demo", "--name", "echo", "--id", "echo-1") }
	heartbeat()
	waitFor(t, 60*time.Second, func() error {
		_, err := east.resolve("echo.demo.west.mesh")
		return err
	})
	l.step(4, "while east's echo is healthy, echo.demo.mesh is east's own instance")
	if ip, err := east.resolve("echo.demo.mesh"); err != nil || ip != east.workIP {
		t.Fatalf("failover name while healthy: %q %v, want %s", ip, err, east.workIP)
	}
	l.step(5, "east's echo misses its heartbeats: the name moves to west's, and calls go through")
	waitFor(t, 30*time.Second, func() error {
		ip, err := east.resolve("echo.demo.mesh")
		if err != nil {
			return err
		}
		if !strings.HasPrefix(ip, "127.240.") {
			return fmt.Errorf("echo.demo.mesh is still %s", ip)
		}
		return east.call(ip + ":7000")
	})
	_ = west
	l.step(6, "east's echo recovers: the name comes back")
	waitFor(t, 30*time.Second, func() error {
		heartbeat()
		ip, err := east.resolve("echo.demo.mesh")
		if err != nil || ip != east.workIP {
			return fmt.Errorf("echo.demo.mesh is %q (%v)", ip, err)
		}
		return nil
	})
}

// TestControlPlaneDown: every server of west stops; established and new
// traffic through the gateways keeps flowing on their last configuration.
func TestControlPlaneDown(t *testing.T) {
	l := newLab(t, "east", "west")
	l.step(1, "start two sites")
	for _, s := range l.sites {
		s.start()
	}
	east, west := l.sites[0], l.sites[1]
	l.federateAll(2)
	var vip string
	waitFor(t, 60*time.Second, func() error {
		var err error
		if vip, err = east.resolve("echo.demo.west.mesh"); err != nil {
			return err
		}
		return east.call(vip + ":7000")
	})
	l.step(4, "stop west's server (its whole control plane)")
	west.server.stop()
	l.step(5, "east still calls west's service through both gateways, for 5s")
	stop := east.callLoop(vip + ":7000")
	time.Sleep(5 * time.Second)
	ok, failed := stop()
	if ok == 0 || failed > 0 {
		t.Fatalf("with west's control plane down: %d calls ok, %d failed", ok, failed)
	}
	l.step(6, "%d calls, none failed", ok)
}

// configure writes a server config file for s (dev mode reads it too).
func (s *site) configure(yaml string) {
	s.config = filepath.Join(s.lab.dir, s.name+".yaml")
	if err := os.WriteFile(s.config, []byte(yaml), 0o600); err != nil {
		s.lab.t.Fatal(err)
	}
}
