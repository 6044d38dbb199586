package main

// hostile rss: the resident memory of a build's gateways (and servers), for
// before/after comparisons of two builds (bench/compare.sh). It starts the
// same two federated dev sites as hostile bench (each one server and one
// gateway on loopback; east exports an echo service to west), reads
// VmRSS and VmHWM from /proc and the Go heap in use from /metrics after
// -idle with nothing happening, then after a fixed load (-calls
// connections through both gateways, each a round trip, from -workers
// clients) and -settle. It prints one "key=value" line per process and
// moment; no flood, nothing hostile.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func runRSS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("rss", flag.ExitOnError)
	var o benchOpts
	fs.StringVar(&o.strait, "strait", "bin/strait", "the strait binary to measure")
	idle := fs.Duration("idle", 10*time.Second, "how long the sites stay idle before the first reading")
	calls := fs.Int("calls", 2000, "connections from west to east's echo through both gateways, a round trip each")
	workers := fs.Int("workers", 8, "concurrent callers")
	settle := fs.Duration("settle", 5*time.Second, "how long after the load before the second reading")
	label := fs.String("label", "", "a word added to every line (e.g. old or new)")
	fs.StringVar(&o.keepLogs, "logs", "", "directory to keep every process's log in")
	fs.Parse(args)
	o.setupTimeout, o.cliTimeout = 60*time.Second, 30*time.Second
	if _, err := os.Stat(o.strait); err != nil {
		return fmt.Errorf("-strait: %w", err)
	}
	dir, err := os.MkdirTemp("", "hostile-rss-")
	if err != nil {
		return err
	}
	l := &lab{o: o, dir: dir, phase: "rss"}
	defer l.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	east, west, target, err := l.setup(ctx, "")
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	procs := []*proc{east.gateway, west.gateway, east.server, west.server}
	report := func(moment string) error {
		for _, p := range procs {
			rss, hwm, err := memOf(p)
			if err != nil {
				return fmt.Errorf("%s: %w (last line: %s)", p.name, err, p.out.lastLine())
			}
			// The Go heap in use: steadier than RSS, which moves with when
			// the runtime last returned memory to the kernel.
			heap := gauge(p.metrics, "go_memstats_heap_inuse_bytes")
			fmt.Printf("rss label=%s moment=%s process=%s vmrss_kib=%d vmhwm_kib=%d heap_inuse_kib=%d\n", *label, moment, p.name, rss, hwm, heap>>10)
		}
		return nil
	}
	hold(ctx, *idle)
	if err := report("idle"); err != nil {
		return err
	}
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range max(*workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*calls) && ctx.Err() == nil {
				if _, err := call(target); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("rss label=%s load calls=%d failed=%d took_ms=%d\n", *label, *calls, failed.Load(), time.Since(start).Milliseconds())
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(os.Stderr, "hostile rss: first failed call: %s\n", e)
	}
	hold(ctx, *settle)
	return report("after-load")
}

// memOf reads VmRSS and VmHWM (KiB) of a running process.
func memOf(p *proc) (rss, hwm int64, err error) {
	if !p.alive() {
		return 0, 0, fmt.Errorf("exited")
	}
	st, err := procStatus(p.cmd.Process.Pid)
	if err != nil {
		return 0, 0, err
	}
	rss, ok1 := st["VmRSS"]
	hwm, ok2 := st["VmHWM"]
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM in /proc/%d/status", p.cmd.Process.Pid)
	}
	return rss, hwm, nil
}
