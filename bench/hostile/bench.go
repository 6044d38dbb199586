package main

// hostile bench: issue 14's Measure section. For each flood in turn, on a
// fresh pair of sites on loopback (dev site A with a gateway, under
// attack; healthy peer B with a gateway, calling A's echo service through
// both gateways all along), it samples A's server and gateway (RSS, fds
// and threads from /proc, goroutines from /metrics when the binary
// exports go_goroutines) before and during the flood, and B's calls'
// success rate and p99, and prints a markdown table. A process that exits
// during a flood is reported as such; nothing waits without a bound.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/straitmesh/strait/bench/hostilepeer"
	"github.com/straitmesh/strait/meshname"
)

type benchOpts struct {
	strait                   string
	services, idle, dnsN     int
	dnsRate                  int
	nofile                   uint64
	baseline, during         time.Duration
	resyncDuring             time.Duration
	callRate                 int
	phases                   []string
	keepLogs                 string
	setupTimeout, cliTimeout time.Duration
}

func runBench(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	var o benchOpts
	fs.StringVar(&o.strait, "strait", "bin/strait", "the strait binary to measure")
	fs.IntVar(&o.services, "services", 66000, "services in the fake peer's resync (flood a)")
	fs.IntVar(&o.idle, "idle", 2000, "idle connections to each of A's gateway WAN port (SNI servers.<td>) and API port (flood b)")
	fs.IntVar(&o.dnsN, "dns", 45000, "forwarded DNS queries (flood c)")
	fs.IntVar(&o.dnsRate, "dns-rate", 15000, "DNS queries per second")
	fs.Uint64Var(&o.nofile, "nofile", 20000, "fd limit set on A's server and gateway, as in the audit (0: leave it)")
	fs.DurationVar(&o.baseline, "baseline", 5*time.Second, "measuring before each flood")
	fs.DurationVar(&o.during, "during", 30*time.Second, "measuring from the start of each flood")
	fs.DurationVar(&o.resyncDuring, "resync-during", 60*time.Second, "measuring from the start of the resync flood (the site takes longer to digest it)")
	fs.IntVar(&o.callRate, "calls", 20, "B's calls to A's echo per second")
	phases := fs.String("phases", "resync,idle,dns", "which floods, in order")
	fs.StringVar(&o.keepLogs, "logs", "", "directory to keep every process's log in")
	fs.Parse(args)
	o.phases = strings.Split(*phases, ",")
	o.setupTimeout, o.cliTimeout = 60*time.Second, 30*time.Second
	if _, err := os.Stat(o.strait); err != nil {
		return fmt.Errorf("-strait: %w", err)
	}
	var rows []phaseResult
	for _, ph := range o.phases {
		fmt.Fprintf(os.Stderr, "hostile bench: phase %s\n", ph)
		r, err := runPhase(ctx, o, ph)
		if err != nil {
			r.note = append(r.note, "phase error: "+err.Error())
			fmt.Fprintf(os.Stderr, "hostile bench: phase %s: %v\n", ph, err)
		}
		rows = append(rows, r)
		if ctx.Err() != nil {
			break
		}
	}
	printTable(os.Stdout, o, rows)
	return nil
}

// sample is one reading of a process.
type sample struct {
	rss, fds, threads, goroutines int64 // -1: unknown
}

type procStats struct {
	before, peak sample
	exited       string // why, when the process ended during the phase
}

type phaseResult struct {
	name        string
	flood       string
	server, gw  procStats
	calls, fail int
	p99, p50    time.Duration
	note        []string
	setupFailed bool
}

// proc is a process of the bench.
type proc struct {
	name    string
	cmd     *exec.Cmd
	out     *tailBuffer
	done    chan struct{}
	metrics string // host:port of its /metrics
}

// tailBuffer keeps the last 64 KiB written.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	all *os.File
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.all != nil {
		b.all.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) > 64<<10 {
		b.buf = b.buf[len(b.buf)-64<<10:]
	}
	return len(p), nil
}

func (b *tailBuffer) lastLine() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(b.buf)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			if len(l) > 200 {
				l = l[:200] + "..."
			}
			return l
		}
	}
	return ""
}

// lab is one run's processes and files.
type lab struct {
	o     benchOpts
	phase string
	dir   string
	procs []*proc
}

func (l *lab) start(name string, env []string, nofile uint64, args ...string) (*proc, error) {
	cmd := exec.Command(l.o.strait, args...)
	cmd.Env = append(os.Environ(), env...)
	out := &tailBuffer{}
	if l.o.keepLogs != "" {
		f, err := os.Create(filepath.Join(l.o.keepLogs, l.phase+"-"+name+".log"))
		if err == nil {
			out.all = f
		}
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if nofile > 0 {
		lim := unix.Rlimit{Cur: nofile, Max: nofile}
		if err := unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			fmt.Fprintf(os.Stderr, "hostile bench: fd limit of %s not set: %v\n", name, err)
		}
	}
	p := &proc{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	l.procs = append(l.procs, p)
	return p, nil
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop ends the process by its PID (its group), SIGKILL after 5s.
func (p *proc) stop() {
	if !p.alive() {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	if p.out.all != nil {
		p.out.all.Close()
	}
}

func (l *lab) close() {
	for i := len(l.procs) - 1; i >= 0; i-- {
		l.procs[i].stop()
	}
	os.RemoveAll(l.dir)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// benchSite is a dev site: one server and one gateway.
type benchSite struct {
	l                                  *lab
	name, ctxFile                      string
	api, dnsAddr, wan, metrics, gwMets string
	server, gateway                    *proc
}

func (s *benchSite) cli(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.l.o.cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.l.o.strait, args...)
	cmd.Env = append(os.Environ(), "STRAIT_DEV_CONTEXT="+s.ctxFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("strait %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// waitFor polls cond until it returns nil, for at most d.
func waitFor(ctx context.Context, d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not within %s: %w", d, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startSite starts a dev server (and its gateway) named name, with
// virtual IPs from vips, forwarding DNS to upstream when set.
func (l *lab) startSite(ctx context.Context, name, vips, upstream string, nofile uint64) (*benchSite, error) {
	s := &benchSite{l: l, name: name, ctxFile: filepath.Join(l.dir, name+"-context.json")}
	var ports [6]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	s.api, s.dnsAddr = fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[2])
	s.metrics, s.wan, s.gwMets = fmt.Sprintf("127.0.0.1:%d", ports[3]), fmt.Sprintf("127.0.0.1:%d", ports[4]), fmt.Sprintf("127.0.0.1:%d", ports[5])
	cfg := "virtual_ip_cidr: " + vips + "\n"
	if upstream != "" {
		cfg += "dns_upstreams: [\"" + upstream + "\"]\n"
	}
	cfgFile := filepath.Join(l.dir, name+".yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	var err error
	s.server, err = l.start(name+"-server", []string{"STRAIT_DEV_CONTEXT=" + s.ctxFile}, nofile, "server", "--dev", "--site", name, "--config", cfgFile,
		"--bind-addr", s.api, "--bundle-addr", fmt.Sprintf("127.0.0.1:%d", ports[1]), "--dns-addr", s.dnsAddr, "--metrics-addr", s.metrics)
	if err != nil {
		return nil, err
	}
	s.server.metrics = s.metrics
	if err := waitFor(ctx, l.o.setupTimeout, func() error {
		if !s.server.alive() {
			return fmt.Errorf("server exited: %s", s.server.out.lastLine())
		}
		if _, err := os.Stat(s.ctxFile); err != nil {
			return err
		}
		_, err := s.cli(ctx, "status")
		return err
	}); err != nil {
		return nil, fmt.Errorf("site %s: %w", name, err)
	}
	out, err := s.cli(ctx, "token", "create", "--kind", "gateway", "--json")
	if err != nil {
		return nil, err
	}
	var tok struct {
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Secret == "" {
		return nil, fmt.Errorf("gateway token: %v %s", err, out)
	}
	s.gateway, err = l.start(name+"-gw", []string{"STRAIT_JOIN_TOKEN=" + tok.Secret}, nofile, "gateway", "--name", name+"-gw",
		"--data-dir", filepath.Join(l.dir, name+"-gw"), "--wan-addr", s.wan, "--metrics-addr", s.gwMets, "--server", s.api)
	if err != nil {
		return nil, err
	}
	s.gateway.metrics = s.gwMets
	if err := waitFor(ctx, l.o.setupTimeout, func() error {
		if !s.gateway.alive() {
			return fmt.Errorf("gateway exited: %s", s.gateway.out.lastLine())
		}
		out, err := s.cli(ctx, "service", "show", "--ns", "strait", "--name", "gateway")
		_, wanPort, _ := net.SplitHostPort(s.wan)
		if err != nil || !strings.Contains(out, "wan="+wanPort) {
			return fmt.Errorf("gateway not registered yet: %v %s", err, out)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("site %s: %w", name, err)
	}
	return s, nil
}

// echo serves lines back, for B's calls; it stops with ctx.
func echo(ctx context.Context) (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// resolveA asks a DNS server for name's first A record.
func resolveA(server, name string) (string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		return "", err
	}
	for _, a := range r.Answer {
		if rr, ok := a.(*dns.A); ok {
			return rr.A.String(), nil
		}
	}
	return "", fmt.Errorf("%s: no A record (%s)", name, dns.RcodeToString[r.Rcode])
}

// call is one request of the healthy peer: a new connection, a line out
// and back.
func call(addr string) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "ping\n" {
		return 0, fmt.Errorf("echo answered %q", line)
	}
	return time.Since(start), nil
}

// setup starts A (under attack) and B (the healthy peer), federates them,
// and returns the address B calls A's echo at.
func (l *lab) setup(ctx context.Context, upstream string) (a, b *benchSite, target string, err error) {
	if a, err = l.startSite(ctx, "east", "127.241.0.0/16", upstream, l.o.nofile); err != nil {
		return
	}
	if b, err = l.startSite(ctx, "west", "127.242.0.0/16", "", 0); err != nil {
		return
	}
	port, err := echo(ctx)
	if err != nil {
		return
	}
	tok, err := a.cli(ctx, "federation", "token")
	if err != nil {
		return
	}
	if _, err = b.cli(ctx, "federation", "join", strings.TrimSpace(tok)); err != nil {
		return
	}
	steps := [][]string{
		{"service", "register", "--ns", "demo", "--name", "echo", "--port", fmt.Sprintf("tcp=%d/tcp", port), "--address", "127.0.0.1", "--id", "echo-1"},
		{"export", "--ns", "demo", "--svc", "echo", "--to", "west"},
		{"intention", "allow", "--from", "west", "--to", "demo/echo"},
	}
	for _, st := range steps {
		if _, err = a.cli(ctx, st...); err != nil {
			return
		}
	}
	err = waitFor(ctx, l.o.setupTimeout, func() error {
		vip, err := resolveA(b.dnsAddr, "echo.demo.east.mesh")
		if err != nil {
			return err
		}
		target = net.JoinHostPort(vip, strconv.Itoa(port))
		_, err = call(target)
		return err
	})
	return
}

// readProc samples a process from /proc (and its /metrics for goroutines).
func readProc(p *proc) sample {
	s := sample{rss: -1, fds: -1, threads: -1, goroutines: -1}
	if !p.alive() {
		return s
	}
	pid := p.cmd.Process.Pid
	if st, err := procStatus(pid); err == nil {
		if v, ok := st["VmRSS"]; ok {
			s.rss = v << 10
		}
		if v, ok := st["Threads"]; ok {
			s.threads = v
		}
	}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.fds = int64(len(ents))
	}
	s.goroutines = goroutines(p.metrics)
	return s
}

// procStatus reads the fields of /proc/PID/status that start with a
// number (memory figures are in KiB).
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	st := make(map[string]int64)
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if f := strings.Fields(v); ok && len(f) > 0 {
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				st[k] = n
			}
		}
	}
	return st, nil
}

// goroutines reads go_goroutines from a /metrics endpoint (-1 when the
// binary does not export it or does not answer within 2s).
func goroutines(addr string) int64 { return gauge(addr, "go_goroutines") }

// gauge reads an unlabelled metric from a /metrics endpoint (-1 when the
// binary does not export it or does not answer within 2s).
func gauge(addr, name string) int64 {
	if addr == "" {
		return -1
	}
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 64<<20))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int64(f)
			}
		}
	}
	return -1
}

func maxSample(a, b sample) sample {
	return sample{max(a.rss, b.rss), max(a.fds, b.fds), max(a.threads, b.threads), max(a.goroutines, b.goroutines)}
}

// sampler reads A's server and gateway every 500 ms and B's calls go on
// at their rate, until stopped.
type sampler struct {
	mu        sync.Mutex
	server    sample
	gw        sample
	latencies []time.Duration
	fails     int
	firstFail error
	stop      context.CancelFunc
	wg        sync.WaitGroup
}

func startSampler(ctx context.Context, a *benchSite, target string, rate int) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{stop: cancel, server: sample{-1, -1, -1, -1}, gw: sample{-1, -1, -1, -1}}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			sv, gw := readProc(a.server), readProc(a.gateway)
			s.mu.Lock()
			s.server, s.gw = maxSample(s.server, sv), maxSample(s.gw, gw)
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
		defer t.Stop()
		var cw sync.WaitGroup
		defer cw.Wait()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cw.Add(1)
			go func() {
				defer cw.Done()
				d, err := call(target)
				s.mu.Lock()
				defer s.mu.Unlock()
				if err != nil {
					s.fails++
					if s.firstFail == nil {
						s.firstFail = err
					}
					return
				}
				s.latencies = append(s.latencies, d)
			}()
		}
	}()
	return s
}

func (s *sampler) finish() {
	s.stop()
	s.wg.Wait()
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

// runPhase runs one flood on fresh sites.
func runPhase(ctx context.Context, o benchOpts, phase string) (r phaseResult, err error) {
	r.name = phase
	dir, err := os.MkdirTemp("", "hostile-bench-")
	if err != nil {
		return r, err
	}
	l := &lab{o: o, dir: dir, phase: phase}
	defer l.close()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	upstream := ""
	if phase == "dns" {
		up, err := hostilepeer.NewFakeUpstream(pctx, "127.0.0.1:0", hostilepeer.UpstreamSilent, 0)
		if err != nil {
			return r, err
		}
		defer up.Close()
		upstream = up.Addr
	}
	a, _, target, err := l.setup(pctx, upstream)
	if err != nil {
		r.setupFailed = true
		return r, fmt.Errorf("setup: %w", err)
	}
	base := startSampler(pctx, a, target, o.callRate)
	hold(pctx, o.baseline)
	base.finish()
	r.server.before, r.gw.before = base.server, base.gw
	if base.fails > 0 {
		r.note = append(r.note, fmt.Sprintf("%d calls failed before the flood: %v", base.fails, base.firstFail))
	}

	during := startSampler(pctx, a, target, o.callRate)
	d := o.during
	if phase == "resync" {
		d = o.resyncDuring
	}
	fctx, fcancel := context.WithTimeout(pctx, d)
	defer fcancel()
	switch phase {
	case "resync":
		r.flood = fmt.Sprintf("%d-service resync from a fake peer", o.services)
		r.note = append(r.note, floodResync(fctx, a, o.services)...)
	case "idle":
		r.flood = fmt.Sprintf("%d idle h2 connections to the gateway WAN port (SNI servers.east.strait) + %d to the API port", o.idle, o.idle)
		wanIdle := hostilepeer.HoldIdle(fctx, a.wan, o.idle, hostilepeer.IdleH2, meshname.ServersSNI("east.strait"))
		apiIdle := hostilepeer.HoldIdle(fctx, a.api, o.idle, hostilepeer.IdleH2, "")
		r.note = append(r.note, fmt.Sprintf("WAN: %d opened, %d failed; API: %d opened, %d failed", wanIdle.Opened, wanIdle.Failed, apiIdle.Opened, apiIdle.Failed))
		<-fctx.Done()
		r.note = append(r.note, fmt.Sprintf("still open at the end: WAN %d, API %d", wanIdle.Open(), apiIdle.Open()))
		wanIdle.Close()
		apiIdle.Close()
	case "dns":
		r.flood = fmt.Sprintf("%d out-of-domain DNS queries at %d/s, silent upstream", o.dnsN, o.dnsRate)
		res, err := hostilepeer.DNSFlood(fctx, a.dnsAddr, o.dnsN, o.dnsRate, "example.org", 5*time.Second)
		if err != nil {
			r.note = append(r.note, "dns flood: "+err.Error())
		}
		r.note = append(r.note, "dns flood: "+res.String())
		<-fctx.Done()
	default:
		return r, fmt.Errorf("unknown phase %q", phase)
	}
	during.finish()
	r.server.peak, r.gw.peak = during.server, during.gw
	r.calls, r.fail = len(during.latencies)+during.fails, during.fails
	r.p50, r.p99 = percentile(during.latencies, 0.5), percentile(during.latencies, 0.99)
	if during.fails > 0 {
		r.note = append(r.note, fmt.Sprintf("first failed call: %v", during.firstFail))
	}
	for _, p := range []*proc{a.server, a.gateway} {
		if !p.alive() {
			st := &r.server
			if p == a.gateway {
				st = &r.gw
			}
			st.exited = p.out.lastLine()
		}
	}
	return r, nil
}

// floodResync makes a fake peer redeem an invite of a and replicate n
// services; it returns notes on how far the import got.
func floodResync(ctx context.Context, a *benchSite, n int) []string {
	tok, err := a.cli(ctx, "federation", "token", "--peer", "flood")
	if err != nil {
		return []string{"invite: " + err.Error()}
	}
	p, err := hostilepeer.New("flood")
	if err != nil {
		return []string{err.Error()}
	}
	defer p.Close()
	srv, err := p.Serve(ctx, "127.0.0.1:0", hostilepeer.Flood(n))
	if err != nil {
		return []string{err.Error()}
	}
	if _, err := p.Accept(ctx, strings.TrimSpace(tok), hostilepeer.AcceptRequest{Addresses: []string{srv.Addr}}); err != nil {
		return []string{"accept: " + err.Error()}
	}
	<-ctx.Done()
	notes := []string{fmt.Sprintf("fake peer: %d streams, version acknowledged %d (1 = the whole resync committed)", srv.Streams(), srv.Acked())}
	return notes
}

func mb(v int64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f MB", float64(v)/1e6)
}

func num(v int64) string {
	if v < 0 {
		return "n/a"
	}
	return strconv.FormatInt(v, 10)
}

func printTable(w io.Writer, o benchOpts, rows []phaseResult) {
	fmt.Fprintf(w, "\nhostile bench: %s; A's server and gateway fd limit %d; B calls A's echo %d times a second through both gateways.\n\n", o.strait, o.nofile, o.callRate)
	fmt.Fprintln(w, "| flood | process | RSS before → peak | fds before → peak | threads before → peak | goroutines before → peak | exited during the flood | healthy peer: calls ok | p50 / p99 |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, r := range rows {
		if r.setupFailed {
			fmt.Fprintf(w, "| %s | (the sites did not start: see below) | | | | | | | |\n", r.name)
			continue
		}
		for i, ps := range []procStats{r.server, r.gw} {
			name := [...]string{"server", "gateway"}[i]
			exited := "no"
			if ps.exited != "" {
				exited = "**yes**: `" + strings.ReplaceAll(ps.exited, "|", "/") + "`"
			}
			calls, lat := "", ""
			if i == 0 {
				calls = fmt.Sprintf("%d / %d (%.2f%%)", r.calls-r.fail, r.calls, 100*float64(r.calls-r.fail)/float64(max(r.calls, 1)))
				lat = fmt.Sprintf("%s / %s", r.p50.Round(100*time.Microsecond), r.p99.Round(100*time.Microsecond))
			}
			flood := ""
			if i == 0 {
				flood = cmp.Or(r.flood, r.name)
			}
			fmt.Fprintf(w, "| %s | %s | %s → %s | %s → %s | %s → %s | %s → %s | %s | %s | %s |\n", flood, name,
				mb(ps.before.rss), mb(ps.peak.rss), num(ps.before.fds), num(ps.peak.fds), num(ps.before.threads), num(ps.peak.threads),
				num(ps.before.goroutines), num(ps.peak.goroutines), exited, calls, lat)
		}
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		for _, n := range r.note {
			fmt.Fprintf(w, "- %s: %s\n", r.name, n)
		}
	}
}
