package scenarios

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/straitmesh/strait/trust/svidfile"
)

// callLoop calls addr from s over and over until stopped, counting
// failures (each call: a few round trips and new connections). A call
// that fails is retried once, as a client with a retry budget of one
// would: only a failed retry counts as failed; first failures are logged.
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
			err := s.call(addr)
			if err != nil {
				s.lab.t.Logf("  call %s failed (retrying once): %v", addr, err)
				err = s.call(addr)
			}
			if err != nil {
				failN.Add(1)
				s.lab.t.Logf("  retry failed too: %v", err)
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

// TestWANPartition: the WAN between two sites (25 ms apart) is cut for a while. Local
// traffic is unaffected, the imported name keeps answering (marked
// stale), and everything converges after the heal with nobody acting.
func TestWANPartition(t *testing.T) {
	l := newLab(t, "east", "west")
	l.delay = 25 * time.Millisecond
	l.step(1, "start two sites 25 ms apart (one way); their servers mark imports stale after 2s without contact")
	for _, s := range l.sites {
		s.configure("peer_heartbeat: 200ms\npeer_stale_after: 2s\n")
		s.start()
	}
	l.federateAll(2)
	east, west := l.sites[0], l.sites[1]
	vip := east.reachEcho("west")
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

// TestGatewayLoss: west runs two gateways, the second started well after
// west's leader took office (such a late gateway once flapped between
// passing and critical for good); one is killed while east calls west's
// service; traffic moves to the other.
func TestGatewayLoss(t *testing.T) {
	l := newLab(t, "east", "west")
	l.step(1, "start two sites")
	for _, s := range l.sites {
		s.start()
	}
	leaders := time.Now() // both sites' leaders took office before this
	east, west := l.sites[0], l.sites[1]
	l.federateAll(2)
	l.step(4, "20s after west's leader took office (its health TTL is 15s), start west's second gateway; it stays passing")
	time.Sleep(time.Until(leaders.Add(20 * time.Second))) // the input here is time itself
	second := west.addGateway("west-gw2", fmt.Sprintf("10.77.0.%d", 30+west.index))
	for end := time.Now().Add(12 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		out, err := west.cli("service", "show", "--ns", "strait", "--svc", "gateway", "--passing")
		if err != nil || !strings.Contains(out, "west-gw2 ") {
			t.Fatalf("west's late gateway is not passing: %v %s", err, out)
		}
	}
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
	l.step(5, "call west from east in a loop, and kill west's first gateway (SIGKILL)")
	stop := east.callLoop(vip + ":7000")
	time.Sleep(time.Second)
	west.gateway.kill()
	time.Sleep(3 * time.Second)
	ok, failed := stop()
	l.step(6, "%d calls succeeded, %d failed after a retry", ok, failed)
	if ok == 0 || failed > 0 {
		t.Fatalf("%d calls ok, %d failed across the loss of one of two gateways", ok, failed)
	}
	l.step(7, "new calls all succeed on the remaining gateway")
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
		if !east.isVirtualIP(ip) {
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
	vip := east.reachEcho("west")
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

// startCluster runs s as three durable servers (instead of one dev
// server) on 10.88.i.1, .3 and .4, then its gateway and echo workload.
func (s *site) startCluster() []*process {
	l := s.lab
	t := l.t
	ips := []string{s.serverIP, fmt.Sprintf("10.88.%d.3", s.index), fmt.Sprintf("10.88.%d.4", s.index)}
	for _, ip := range ips[1:] {
		run(t, "ip", "-n", s.ns, "addr", "add", ip+"/32", "dev", "lo")
	}
	// Durable servers hand out virtual IPs from 240.0.0.0/16: the
	// gateway's host takes the range as its own, as the README says.
	run(t, "ip", "-n", s.ns, "route", "add", "local", "240.0.0.0/16", "dev", "lo")
	var procs []*process
	serve := func(i int, extra ...string) *process {
		args := append([]string{l.bin, "server", "--site", s.name, "--node-name", fmt.Sprintf("%s-s%d", s.name, i),
			"--data-dir", filepath.Join(l.dir, fmt.Sprintf("%s-s%d", s.name, i)),
			"--bind-addr", ips[i] + ":7400", "--bundle-addr", ips[i] + ":7401", "--leave-on-terminate=false"}, extra...)
		if i == 0 {
			args = append(args, "--dns-addr", ips[0]+":53")
		}
		return l.start(fmt.Sprintf("%s-server-%d", s.name, i), s.ns, nil, args...)
	}
	first := serve(0, "--bootstrap")
	procs = append(procs, first)
	// The management token is printed once; with the CA file it makes
	// the CLI's context for this site.
	var token string
	waitFor(t, 30*time.Second, func() error {
		out := first.cmd.Stdout.(*syncWriter).String()
		_, after, ok := strings.Cut(out, "Initial management token")
		if !ok {
			return fmt.Errorf("no management token printed yet")
		}
		for _, f := range strings.Fields(after) {
			if strings.HasPrefix(f, "strait_") {
				token = f
				return nil
			}
		}
		return fmt.Errorf("no management token printed yet")
	})
	ca, err := os.ReadFile(filepath.Join(l.dir, s.name+"-s0", "tls", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, _ := json.Marshal(map[string]string{"addr": ips[0] + ":7400", "token": token, "ca_pem": string(ca)})
	if err := os.WriteFile(s.ctxFile, ctx, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() error { _, err := s.cli("status"); return err })
	for i := 1; i < 3; i++ {
		var tok struct {
			Secret string `json:"secret"`
		}
		json.Unmarshal([]byte(s.mustCLI("token", "create", "--kind", "server", "--json")), &tok)
		procs = append(procs, serve(i, "--join", ips[0]+":7400", "--join-token", tok.Secret))
	}
	waitFor(t, 60*time.Second, func() error {
		out, err := s.cli("operator", "raft", "list-peers")
		if err != nil || strings.Count(out, "true") < 3 {
			return fmt.Errorf("voters: %v %s", err, out)
		}
		return nil
	})
	s.servers = ips
	s.gateway = s.addGateway(s.name+"-gw", s.gatewayIP)
	l.start(s.name+"-echo", s.ns, nil, l.probe, "-serve", s.workIP+":7000")
	s.mustCLI("service", "register", "--ns", "demo", "--name", "echo", "--port", "tcp=7000/tcp", "--address", s.workIP, "--id", "echo-1")
	return procs
}

// TestLeaderLoss: west runs three servers; its Raft leader is killed
// while east calls west's service; no call fails, and west's catalog
// keeps replicating to east.
func TestLeaderLoss(t *testing.T) {
	l := newLab(t, "east", "west")
	east, west := l.sites[0], l.sites[1]
	l.step(1, "start east (one server) and west (three servers)")
	east.start()
	servers := west.startCluster()
	l.federateAll(2)
	vip := east.reachEcho("west")
	l.step(4, "call west from east in a loop, and kill west's Raft leader (SIGKILL)")
	stop := east.callLoop(vip + ":7000")
	time.Sleep(time.Second)
	var status struct {
		LeaderID string `json:"leader_id"`
	}
	// status exits 1 unless the whole site is healthy; only the leader matters here.
	out, _ := west.cli("status", "--json")
	json.Unmarshal([]byte(out), &status)
	leader := -1
	for i := range servers {
		if status.LeaderID == fmt.Sprintf("west-s%d", i) {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatalf("no leader in %+v", status)
	}
	servers[leader].kill()
	l.step(5, "west elects a new leader; a new instance registered there reaches east")
	survivor := west.servers[(leader+1)%3]
	west.ctxAddr(survivor + ":7400")
	waitFor(t, 60*time.Second, func() error {
		_, err := west.cli("service", "register", "--ns", "demo", "--name", "echo", "--port", "tcp=7000/tcp", "--address", west.workIP, "--id", "echo-2")
		return err
	})
	waitFor(t, 60*time.Second, func() error {
		out, err := east.cli("service", "show", "--ns", "demo", "--name", "echo", "--peer", "west")
		if err != nil || !strings.Contains(out, "echo-2") {
			return fmt.Errorf("east does not see echo-2 yet: %v", err)
		}
		return nil
	})
	ok, failed := stop()
	l.step(6, "%d calls during the leader loss, %d failed after a retry", ok, failed)
	if ok == 0 || failed > 0 {
		t.Fatalf("%d calls ok, %d failed across the loss of west's leader", ok, failed)
	}
}

// ctxAddr points the site's CLI context at another server.
func (s *site) ctxAddr(addr string) {
	b, err := os.ReadFile(s.ctxFile)
	if err != nil {
		s.lab.t.Fatal(err)
	}
	var m map[string]string
	json.Unmarshal(b, &m)
	m["addr"] = addr
	b, _ = json.Marshal(m)
	os.WriteFile(s.ctxFile, b, 0o600)
}

// TestRotationUnderLoad: west rotates its CA while east calls into it over
// a WAN shaped to 200 Mbit/s (tc tbf); west's gateway moves to an SVID
// from the new root, and no call fails.
func TestRotationUnderLoad(t *testing.T) {
	l := newLab(t, "east", "west")
	l.step(1, "start two sites; west's new CA roots sign 3s after they are published")
	east, west := l.sites[0], l.sites[1]
	east.start()
	west.configure("ca_propagation_delay: 3s\n")
	west.start()
	l.shape("200mbit")
	l.federateAll(2)
	vip := east.reachEcho("west")
	l.step(4, "call west from east in a loop, and rotate west's CA")
	stop := east.callLoop(vip + ":7000")
	before := west.mustCLI("ca", "status", "--json")
	west.mustCLI("ca", "rotate")
	l.step(5, "the new root signs, and west's gateway renews onto it")
	svidFile := filepath.Join(l.dir, "west-gw", "tls", "svid.pem")
	waitFor(t, 60*time.Second, func() error {
		var st struct {
			Roots []struct {
				Phase        string `json:"phase"`
				SubjectKeyID string `json:"subject_key_id"`
			} `json:"roots"`
		}
		json.Unmarshal([]byte(west.mustCLI("ca", "status", "--json")), &st)
		active := ""
		for _, r := range st.Roots {
			if r.Phase == "active" {
				active = r.SubjectKeyID
			}
		}
		if active == "" || strings.Contains(before, `"subject_key_id":"`+active+`"`) && !strings.Contains(before, "prepared") {
			return fmt.Errorf("the new root is not active yet")
		}
		b, err := os.ReadFile(svidFile)
		if err != nil {
			return err
		}
		certs, err := svidfile.ParseCerts(b)
		if err != nil {
			return err
		}
		if fmt.Sprintf("%x", certs[0].AuthorityKeyId) != active {
			return fmt.Errorf("west's gateway SVID is not from the new root yet")
		}
		return nil
	})
	time.Sleep(2 * time.Second) // and some traffic on the new certificates
	ok, failed := stop()
	l.step(6, "%d calls across the rotation, %d failed after a retry", ok, failed)
	if ok == 0 || failed > 0 {
		t.Fatalf("%d calls ok, %d failed across the rotation", ok, failed)
	}
}

// TestLossyWAN: two sites 10 ms apart over WAN links that lose 2% of
// frames each way (bench/lossylink, in user space): the join, replication
// and calls through the gateways all complete, TCP retransmitting what
// the WAN loses.
func TestLossyWAN(t *testing.T) {
	l := newLossyLab(t, 0.02, "east", "west")
	l.delay = 10 * time.Millisecond
	l.step(1, "start two sites 10 ms apart (one way) over WAN links that lose 2%% of frames each way")
	east, west := l.sites[0], l.sites[1]
	east.start()
	west.start()
	l.federateAll(2)
	vip := east.reachEcho("west")
	l.step(4, "call west from east in a loop for 5s")
	stop := east.callLoop(vip + ":7000")
	time.Sleep(5 * time.Second) // the load period
	ok, failed := stop()
	forwarded, lost := l.lost()
	l.step(5, "%d calls, %d failed after a retry; the WAN lost %d of %d frames", ok, failed, lost, forwarded+lost)
	if ok == 0 || failed > 0 {
		t.Fatalf("%d calls ok, %d failed over the lossy WAN", ok, failed)
	}
	if lost == 0 {
		t.Fatal("the WAN lost no frame: the scenario did not test loss")
	}
}
