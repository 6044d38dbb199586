package scenarios

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds every Strait process of the hostile-peer scenario must stay
// under while it is attacked. The attack offers far more than each: a
// 66,000-service resync, 20,000 unknown SNIs, 1,000 held streams, 4,000
// idle connections and 45,000 forwarded DNS queries. A site that bounds
// what a peer or a stranger can make it hold (issue 14) stays well under
// them; one that does not blows through them (the audit measured 2.65 GB
// and 16,457 fds on a server, 1.09 GB and 20,000 fds on a gateway).
const (
	// hostileMaxRSS: an idle dev server or gateway uses under 100 MB; a
	// peer's import quota and bounded connection, stream and DNS budgets
	// leave room for a few times that, not for gigabytes.
	// Measured with every bound in place: peaks of 121 MB (server) and
	// 66 MB (gateway).
	hostileMaxRSS = 320 << 20
	// hostileMaxFDs: connection caps (per source and in total) with idle
	// deadlines, bounded DNS forwards on reused sockets and a cap on
	// egress listeners keep each process to a few thousand descriptors
	// (the gateway legitimately holds one upstream connection per stream
	// the intention allows: the 1,000 held streams), below the 4,000 idle
	// connections offered (each passed-through one costs the gateway two)
	// and far below the 20,000 the audit's processes reached.
	// Measured: peaks of 707 (server) and 275 (gateway).
	hostileMaxFDs = 2048
	// hostileMaxGoroutines: a few per connection and stream in flight
	// under the same caps; unbounded, each idle connection costs 2 to 3
	// and each forwarded query one.
	// Measured: peaks of 2,293 (server) and 295 (gateway).
	hostileMaxGoroutines = 4000
)

var hostileOnce sync.Once
var hostileBin string
var hostileErr error

// buildHostile compiles bench/hostile (the attacker) next to strait.
func buildHostile(t *testing.T, l *lab) string {
	t.Helper()
	hostileOnce.Do(func() {
		hostileBin = filepath.Join(filepath.Dir(l.bin), "hostile")
		out, err := exec.Command("go", "build", "-o", hostileBin, "../bench/hostile").CombinedOutput()
		if err != nil {
			hostileErr = fmt.Errorf("go build ../bench/hostile: %v\n%s", err, out)
		}
	})
	if hostileErr != nil {
		t.Fatal(hostileErr)
	}
	return hostileBin
}

// startWithMetrics is site.start with the gateway's /metrics on
// <serverIP>:9401 (inside the site), so that its goroutines can be read.
func (s *site) startWithMetrics() {
	s.startServer()
	s.gateway = s.addGateway(s.name+"-gw", s.gatewayIP, "--metrics-addr", s.serverIP+":9401")
	s.startEcho()
}

// dialInNS opens a TCP connection from inside network namespace ns: the
// socket is made on a locked thread moved into ns and moved back after.
// (The thread must not end while moved: the lab's processes die with the
// thread that started them, Pdeathsig, and the runtime ends a thread whose
// locked goroutine exits. If the move back fails, the goroutine stays
// locked and parked for good instead.)
func dialInNS(ctx context.Context, ns, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		ch <- result{c, err}
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) != nil {
			select {} // keep the thread, locked, rather than end it
		}
		runtime.UnlockOSThread()
	}()
	r := <-ch
	return r.c, r.err
}

// goroutinesIn reads go_goroutines from a /metrics inside ns; -1 when the
// endpoint has no such metric or does not answer within 3s.
func goroutinesIn(ns, addr string) int64 {
	c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(ctx context.Context, _, a string) (net.Conn, error) { return dialInNS(ctx, ns, a) },
	}}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 64<<20))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return int64(f)
			}
		}
	}
	return -1
}

// watched is a Strait process whose resources the scenario bounds.
type watched struct {
	p                    *process
	ns, metrics          string
	rss, fds, goroutines atomic.Int64 // peaks
	noGoroutines, exited atomic.Bool
}

func (w *watched) sample() {
	if w.p.cmd.ProcessState != nil || w.p.cmd.Process == nil {
		w.exited.Store(true)
		return
	}
	pid := w.p.cmd.Process.Pid // ip netns exec execs the binary: same PID
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		w.exited.Store(true)
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				storeMax(&w.rss, v<<10)
			}
		}
	}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		storeMax(&w.fds, int64(len(ents)))
	}
	if g := goroutinesIn(w.ns, w.metrics); g >= 0 {
		storeMax(&w.goroutines, g)
	} else {
		w.noGoroutines.Store(true)
	}
}

func storeMax(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// TestHostilePeer: a site keeps serving a healthy peer while a federated
// peer (a fake one, of its own making) floods it and an anonymous client
// misbehaves: no call of the healthy peer fails, no Strait process exits,
// and every one stays under fixed bounds of memory, descriptors and
// goroutines.
func TestHostilePeer(t *testing.T) {
	l := newLab(t, "east", "west")
	hostile := buildHostile(t, l)
	east, west := l.sites[0], l.sites[1]

	l.step(1, "east forwards out-of-mesh DNS names to an upstream that never answers (on its workload host)")
	l.start("east-upstream", east.ns, nil, hostile, "upstream", "-listen", east.workIP+":5353", "-mode", "silent", "-for", "5m")
	east.config = filepath.Join(l.dir, "east.yaml")
	if err := os.WriteFile(east.config, []byte(fmt.Sprintf("dns_upstreams: [%q]\n", east.workIP+":5353")), 0o600); err != nil {
		t.Fatal(err)
	}
	l.step(2, "start east and west: a server (mesh DNS, /metrics), a gateway (/metrics) and an echo workload each")
	for _, s := range l.sites {
		s.startWithMetrics()
	}
	l.step(3, "west (the healthy peer) joins east; east exports demo/echo to west and allows it")
	tok := strings.TrimSpace(east.mustCLI("federation", "token"))
	west.mustCLI("federation", "join", tok)
	east.mustCLI("export", "--ns", "demo", "--svc", "echo", "--to", "west")
	east.mustCLI("intention", "allow", "--from", "west", "--to", "demo/echo")
	var target string
	waitFor(t, 60*time.Second, func() error {
		vip, err := west.resolve("echo.demo.east.mesh")
		if err != nil {
			return err
		}
		target = vip + ":7000"
		return west.call(target)
	})

	var procs []*watched
	for _, s := range l.sites {
		procs = append(procs, &watched{p: s.server, ns: s.ns, metrics: s.serverIP + ":9400"},
			&watched{p: s.gateway.process, ns: s.ns, metrics: s.serverIP + ":9401"})
	}
	sampleAll := func() {
		for _, w := range procs {
			w.sample()
		}
	}
	sampleAll()
	for _, w := range procs {
		t.Logf("  before: %s rss=%d MB fds=%d goroutines=%d", w.p.name, w.rss.Load()>>20, w.fds.Load(), w.goroutines.Load())
	}

	l.step(4, "west calls east's echo through both gateways all along (no retries: nothing here is allowed to fail)")
	var okCalls, failedCalls atomic.Int64
	stopCalls := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(2)
	go func() {
		defer bg.Done()
		for {
			select {
			case <-stopCalls:
				return
			default:
			}
			if err := west.call(target); err != nil {
				if failedCalls.Add(1) <= 3 {
					t.Logf("  healthy call failed: %v", err)
				}
			} else {
				okCalls.Add(1)
			}
		}
	}()
	go func() {
		defer bg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopCalls:
				return
			case <-tick.C:
				sampleAll()
			}
		}
	}()

	l.step(5, "a fake peer on the WAN redeems an invite of east and replicates 66,000 services; as a peer gateway it opens 20,000 streams for unknown names and holds 1,000 to echo")
	const attack = 40 * time.Second
	run(t, "ip", "-n", l.wan, "addr", "add", "10.77.0.200/24", "dev", "br0")
	invite := strings.TrimSpace(east.mustCLI("federation", "token", "--peer", "flood"))
	inviteFile := filepath.Join(l.dir, "flood-invite")
	if err := os.WriteFile(inviteFile, []byte(invite), 0o600); err != nil {
		t.Fatal(err)
	}
	east.mustCLI("export", "--ns", "demo", "--svc", "echo", "--to", "*")
	east.mustCLI("intention", "allow", "--from", "flood", "--to", "demo/echo")
	peer := l.start("fake-peer", l.wan, nil, hostile, "peer", "-site", "flood", "-invite", "@"+inviteFile, "-listen", "10.77.0.200:7400",
		"-script", "flood", "-n", "66000", "-gw", east.gateway.addr, "-sniflood", "20000", "-streams", "1000",
		"-stream-sni", "tcp.echo.demo.east.strait", "-for", attack.String())

	l.step(6, "an anonymous client holds 2,000 idle HTTP/2 connections on east's gateway (servers.east.strait) from the WAN, 2,000 on east's server port from a workload host, and sends 45,000 out-of-mesh DNS queries at 15,000/s")
	idleWAN := l.start("idle-wan", l.wan, nil, hostile, "idle", "-addr", east.gateway.addr, "-sni", "servers.east.strait", "-mode", "h2", "-n", "2000", "-for", attack.String())
	idleAPI := l.start("idle-api", east.ns, nil, hostile, "idle", "-addr", east.serverIP+":7400", "-mode", "h2", "-n", "2000", "-for", attack.String())
	dnsFlood := l.start("dns-flood", east.ns, nil, hostile, "dnsflood", "-addr", east.serverIP+":53", "-n", "45000", "-rate", "15000", "-linger", "5s")

	attackers := []*process{peer, idleWAN, idleAPI, dnsFlood}
	for _, a := range attackers {
		done := make(chan struct{})
		go func() { a.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(attack + 30*time.Second):
			t.Errorf("%s did not end within %s", a.name, attack+30*time.Second)
			syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		t.Logf("  %s: %s", a.name, strings.TrimSpace(a.cmd.Stdout.(*syncWriter).String()))
	}
	close(stopCalls)
	bg.Wait()
	sampleAll()

	l.step(7, "the healthy peer saw no failure; every Strait process is alive and stayed under the bounds")
	t.Logf("  healthy calls: %d ok, %d failed", okCalls.Load(), failedCalls.Load())
	if n := failedCalls.Load(); n > 0 {
		t.Errorf("%d of west's calls to east failed while east was attacked", n)
	}
	if okCalls.Load() == 0 {
		t.Errorf("west made no successful call during the attack")
	}
	for _, w := range procs {
		t.Logf("  peak: %s rss=%d MB fds=%d goroutines=%d", w.p.name, w.rss.Load()>>20, w.fds.Load(), w.goroutines.Load())
		if w.exited.Load() {
			t.Errorf("%s exited during the attack", w.p.name)
		}
		if v := w.rss.Load(); v > hostileMaxRSS {
			t.Errorf("%s: RSS reached %d MB (bound %d MB)", w.p.name, v>>20, hostileMaxRSS>>20)
		}
		if v := w.fds.Load(); v > hostileMaxFDs {
			t.Errorf("%s: %d open fds (bound %d)", w.p.name, v, hostileMaxFDs)
		}
		if w.noGoroutines.Load() && w.goroutines.Load() == 0 {
			t.Errorf("%s: its /metrics has no go_goroutines (every process must export the Go runtime collector)", w.p.name)
		} else if v := w.goroutines.Load(); v > hostileMaxGoroutines {
			t.Errorf("%s: %d goroutines (bound %d)", w.p.name, v, hostileMaxGoroutines)
		}
	}
}
