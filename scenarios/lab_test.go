package scenarios

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A lab is a set of sites, each its own network namespace (its own host),
// joined by a "WAN": a bridge in a namespace of its own, to which only the
// sites' gateway addresses are attached. Servers and workloads live on
// addresses of their site's namespace that nothing outside routes to, so
// the only way between sites is gateway to gateway.
//
//	site i:  gateway   10.77.0.(10+i)/24 on the WAN link
//	         server    10.88.i.1 (local to the site)
//	         workloads 10.88.i.2 (local to the site)
//
// Every process runs in its namespace, dies with the test process
// (Pdeathsig) and is stopped by PID; the namespaces and links are removed
// at the end whatever happens.

type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncWriter
}

type lab struct {
	t     *testing.T
	id    string
	dir   string
	bin   string
	probe string
	relay string
	// delay, when set before sites start, puts a user-space relay with this
	// one-way delay in front of every gateway, in the WAN namespace: all
	// traffic between sites crosses it.
	delay  time.Duration
	relays int
	// loss, when set (newLossyLab), makes every site's WAN link a pair of
	// TAP devices joined by bench/lossylink, which loses this fraction of
	// frames each way, in user space: TCP between the gateways sees real
	// packet loss and retransmits.
	loss  float64
	links []*process
	wan   string
	sites []*site
	mu    sync.Mutex
	procs []*process
}

type site struct {
	lab              *lab
	name, ns         string
	index            int
	gatewayIP        string
	serverIP, workIP string
	ctxFile          string
	config           string // server config file, if any
	server           *process
	servers          []string // with startCluster: the servers' addresses
	gateway          *gatewayProc
}

type gatewayProc struct {
	*process
	addr string
}

var buildOnce sync.Once
var buildErr error
var binDir string

// build compiles strait, the probe and the relay once per test binary.
func build(t *testing.T) (string, string) {
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "strait-scenarios-bin-")
		if buildErr != nil {
			return
		}
		for _, b := range [][2]string{{"strait", "../cmd/strait"}, {"tcpprobe", "../bench/tcpprobe"}, {"wanrelay", "../bench/wanrelay"}, {"lossylink", "../bench/lossylink"}} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, b[0]), b[1]).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "strait"), filepath.Join(binDir, "tcpprobe")
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newLab builds the topology for the named sites.
func newLab(t *testing.T, names ...string) *lab {
	t.Helper()
	return newLossyLab(t, 0, names...)
}

// newLossyLab builds the topology with WAN links that lose the fraction
// loss of frames each way (none when zero: plain veth pairs).
func newLossyLab(t *testing.T, loss float64, names ...string) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("scenarios build network namespaces: run them as root (make scenarios)")
	}
	bin, probe := build(t)
	l := &lab{t: t, id: fmt.Sprint(os.Getpid() % 100000), dir: t.TempDir(), bin: bin, probe: probe, relay: filepath.Join(filepath.Dir(bin), "wanrelay"), loss: loss}
	l.wan = "sc-wan-" + l.id
	t.Cleanup(l.teardown)
	run(t, "ip", "netns", "add", l.wan)
	run(t, "ip", "-n", l.wan, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", l.wan, "link", "set", "br0", "up")
	for i, name := range names {
		s := &site{lab: l, name: name, index: i, ns: fmt.Sprintf("sc-%s-%s", name, l.id),
			gatewayIP: fmt.Sprintf("10.77.0.%d", 10+i), serverIP: fmt.Sprintf("10.88.%d.1", i), workIP: fmt.Sprintf("10.88.%d.2", i),
			ctxFile: filepath.Join(l.dir, name+".json")}
		l.sites = append(l.sites, s)
		run(t, "ip", "netns", "add", s.ns)
		a, b := fmt.Sprintf("w%s%d", l.id, i), fmt.Sprintf("s%s%d", l.id, i)
		if l.loss > 0 {
			l.lossyLink(s, a, b)
		} else {
			run(t, "ip", "link", "add", a, "netns", l.wan, "type", "veth", "peer", "name", b, "netns", s.ns)
		}
		run(t, "ip", "-n", l.wan, "link", "set", a, "master", "br0")
		run(t, "ip", "-n", l.wan, "link", "set", a, "up")
		run(t, "ip", "-n", s.ns, "addr", "add", s.gatewayIP+"/24", "dev", b)
		run(t, "ip", "-n", s.ns, "link", "set", b, "up")
		run(t, "ip", "-n", s.ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", s.ns, "addr", "add", s.serverIP+"/32", "dev", "lo")
		run(t, "ip", "-n", s.ns, "addr", "add", s.workIP+"/32", "dev", "lo")
	}
	return l
}

// lossyLink joins site s to the WAN with two TAP devices, a (WAN side)
// and b (moved into the site's namespace), and lossylink between them.
func (l *lab) lossyLink(s *site, a, b string) {
	t := l.t
	run(t, "ip", "-n", l.wan, "tuntap", "add", "dev", a, "mode", "tap")
	run(t, "ip", "-n", l.wan, "tuntap", "add", "dev", b, "mode", "tap")
	p := l.start(s.name+"-wan-link", l.wan, nil, filepath.Join(filepath.Dir(l.bin), "lossylink"), "-a", a, "-b", b, "-loss", fmt.Sprint(l.loss))
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(p.cmd.Stdout.(*syncWriter).String(), "attached") {
			return fmt.Errorf("lossylink not attached yet")
		}
		return nil
	})
	run(t, "ip", "-n", l.wan, "link", "set", b, "netns", s.ns) // the link stays attached
	l.links = append(l.links, p)
}

// lost stops the lossy links and returns the frames they forwarded and lost.
func (l *lab) lost() (forwarded, lost int) {
	for _, p := range l.links {
		p.stop()
		var f, x int
		out := p.cmd.Stdout.(*syncWriter).String()
		if i := strings.LastIndex(out, "frames forwarded="); i >= 0 {
			fmt.Sscanf(out[i:], "frames forwarded=%d lost=%d", &f, &x)
		}
		forwarded, lost = forwarded+f, lost+x
	}
	return forwarded, lost
}

// shape limits every site's WAN link to rate (tc tbf, both directions).
func (l *lab) shape(rate string) {
	l.t.Helper()
	for _, s := range l.sites {
		run(l.t, "ip", "netns", "exec", l.wan, "tc", "qdisc", "add", "dev", fmt.Sprintf("w%s%d", l.id, s.index), "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")
		run(l.t, "ip", "netns", "exec", s.ns, "tc", "qdisc", "add", "dev", fmt.Sprintf("s%s%d", l.id, s.index), "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")
	}
}

// start runs a process in a namespace.
func (l *lab) start(name, ns string, env []string, args ...string) *process {
	l.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	// One writer for both streams: exec copies each on its own goroutine.
	out := &syncWriter{w: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

// kill ends a process (its whole group) at once, as a crash would.
func (p *process) kill() {
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.cmd.Wait()
}

// stop ends a process (its whole group) by PID.
func (p *process) stop() {
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// teardown stops every process and removes the namespaces; on failure,
// it prints the processes' logs first. With STRAIT_SCENARIO_LOGS=<dir>
// in the environment, it also writes every process's whole log there,
// pass or fail.
func (l *lab) teardown() {
	l.mu.Lock()
	procs := l.procs
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop()
	}
	if dir := os.Getenv("STRAIT_SCENARIO_LOGS"); dir != "" {
		for _, p := range procs {
			name := filepath.Join(dir, l.t.Name()+"-"+p.name+".log")
			if err := os.WriteFile(name, []byte(p.cmd.Stdout.(*syncWriter).String()), 0o644); err != nil {
				l.t.Logf("keeping the log of %s: %v", p.name, err)
			}
		}
	}
	if l.t.Failed() {
		for _, p := range procs {
			out := p.cmd.Stdout.(*syncWriter).String()
			if len(out) > 60000 {
				out = "..." + out[len(out)-60000:]
			}
			l.t.Logf("--- log of %s:\n%s", p.name, out)
		}
	}
	for _, s := range l.sites {
		exec.Command("ip", "netns", "del", s.ns).Run()
	}
	exec.Command("ip", "netns", "del", l.wan).Run()
}

// step logs a numbered step of the story.
func (l *lab) step(n int, format string, args ...any) {
	l.t.Helper()
	l.t.Logf("step %d: %s", n, fmt.Sprintf(format, args...))
}

// cli runs the strait CLI against site s, inside its namespace.
func (s *site) cli(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", s.ns, s.lab.bin}, args...)...)
	cmd.Env = append(os.Environ(), "STRAIT_DEV_CONTEXT="+s.ctxFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output() // stdout only: stderr carries hints
	if err != nil {
		return string(out), fmt.Errorf("strait %s: %v: %s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out), nil
}

func (s *site) mustCLI(args ...string) string {
	s.lab.t.Helper()
	out, err := s.cli(args...)
	if err != nil {
		s.lab.t.Fatal(err)
	}
	return out
}

// exec runs a command inside the site's namespace.
func (s *site) exec(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", s.ns, name}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// start runs the site's server, gateway and an echo workload.
func (s *site) start() {
	s.startServer()
	s.gateway = s.addGateway(s.name+"-gw", s.gatewayIP)
	s.startEcho()
}

// startServer runs the site's server (a dev server) and waits until it
// answers.
func (s *site) startServer() {
	l := s.lab
	args := []string{l.bin, "server", "--dev", "--site", s.name,
		"--bind-addr", s.serverIP + ":7400", "--bundle-addr", s.serverIP + ":7401", "--dns-addr", s.serverIP + ":53", "--metrics-addr", s.serverIP + ":9400"}
	if s.config != "" {
		args = append(args, "--config", s.config)
	}
	s.server = l.start(s.name+"-server", s.ns, []string{"STRAIT_DEV_CONTEXT=" + s.ctxFile}, args...)
	waitFor(l.t, 30*time.Second, func() error {
		if _, err := os.Stat(s.ctxFile); err != nil {
			return err
		}
		_, err := s.cli("status")
		return err
	})
}

// startEcho runs the echo workload and registers it as demo/echo.
func (s *site) startEcho() {
	s.lab.start(s.name+"-echo", s.ns, nil, s.lab.probe, "-serve", s.workIP+":7000")
	s.mustCLI("service", "register", "--ns", "demo", "--name", "echo", "--port", "tcp=7000/tcp", "--address", s.workIP, "--id", "echo-1")
}

// addGateway joins and runs a gateway of s on ip (an address on the WAN
// link), with extra flags, and waits until it is in the catalog.
func (s *site) addGateway(name, ip string, extra ...string) *gatewayProc {
	l := s.lab
	l.t.Helper()
	if ip != s.gatewayIP {
		run(l.t, "ip", "-n", s.ns, "addr", "add", ip+"/24", "dev", fmt.Sprintf("s%s%d", l.id, s.index))
	}
	out := s.mustCLI("token", "create", "--kind", "gateway", "--json")
	var tok struct {
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Secret == "" {
		l.t.Fatalf("gateway token: %v %s", err, out)
	}
	args := []string{l.bin, "gateway", "--name", name, "--data-dir", filepath.Join(l.dir, name), "--wan-addr", ip + ":8443",
		"--renew-check", "500ms"}
	args = append(args, extra...)
	servers := s.servers
	if len(servers) == 0 {
		servers = []string{s.serverIP}
	}
	for _, a := range servers {
		args = append(args, "--server", a+":7400")
	}
	advertised := ip
	if l.delay > 0 {
		l.relays++
		relayIP := fmt.Sprintf("10.77.0.%d", 100+l.relays)
		run(l.t, "ip", "-n", l.wan, "addr", "add", relayIP+"/24", "dev", "br0")
		l.start(name+"-wan-relay", l.wan, nil, l.relay, "-listen", relayIP+":8443", "-target", ip+":8443", "-delay", l.delay.String())
		args = append(args, "--advertise-wan", relayIP+":8443")
		advertised = relayIP
	}
	// The token goes in the environment, as the README tells operators:
	// never on a command line every user of the host can read.
	p := l.start(name, s.ns, []string{"STRAIT_JOIN_TOKEN=" + tok.Secret}, args...)
	waitFor(l.t, 30*time.Second, func() error {
		out, err := s.cli("service", "show", "--ns", "strait", "--name", "gateway")
		if err != nil || !strings.Contains(out, advertised) {
			return fmt.Errorf("gateway %s not registered yet: %v %s", name, err, out)
		}
		return nil
	})
	return &gatewayProc{process: p, addr: ip + ":8443"}
}

func waitFor(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
