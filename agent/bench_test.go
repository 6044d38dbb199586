package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// BenchmarkRotate10kSVIDs: one server and one agent holding 10,000
// workload SVIDs; the agent's clock jumps past half-life so all of them
// are due at once. Reports how long re-issuing all 10,000 takes, and the
// catalog write latency (p99, open loop at 200/s) before and during the
// rotation. Use -benchtime 1x.
func BenchmarkRotate10kSVIDs(b *testing.B) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("STRAIT_BENCH_SVIDS")); err == nil {
		n = v
	}
	for b.Loop() {
		s := startSite(b)
		cl := s.c.Client(0)
		ctx := context.Background()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for i := 0; i < n; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				_, err := cl.Workload.CreateEntry(ctx, &apipb.CreateEntryRequest{Entry: &apipb.WorkloadEntry{
					Namespace: "bench", Service: "svc-" + strconv.Itoa(i), Agent: "node1",
					Selectors: []*apipb.Selector{{Type: "unix", Key: "uid", Value: strconv.Itoa(100000 + i)}},
				}})
				if err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		start := time.Now()
		waitAll := func(what string) time.Duration {
			controlplanetest.WaitFor(b, 120*time.Second, func() error {
				st := s.agent.Status()
				if st.Entries != n || st.Due != 0 {
					return fmt.Errorf("%s: %d entries, %d due", what, st.Entries, st.Due)
				}
				return nil
			})
			return time.Since(start)
		}
		first := waitAll("first issue")

		// Catalog writes at 200/s throughout; latency from when each was due.
		var mu sync.Mutex
		var lat []time.Duration
		var phase []bool // true: during rotation
		rotating := false
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case due := <-tick.C:
					go func() {
						_, err := cl.Catalog.Register(ctx, &apipb.RegisterRequest{
							Service:  &apipb.Service{Namespace: "bench", Name: "web"},
							Instance: &apipb.Instance{Id: "i" + strconv.Itoa(i), Address: "10.0.0.1"},
						})
						d := time.Since(due)
						mu.Lock()
						if err == nil {
							lat = append(lat, d)
							phase = append(phase, rotating)
						}
						mu.Unlock()
					}()
				}
			}
		}()
		time.Sleep(12 * time.Second) // baseline writes; see the clock below
		mu.Lock()
		rotating = true
		mu.Unlock()
		// Servers sign in real time while the agent decides by its own
		// clock. 1h SVIDs backdated 1m renew 29.5m after issue; moving the
		// agent 11s short of that makes every SVID issued 12s ago due, and
		// keeps the new ones valid for 10s (the goal), instead of making
		// them due again as soon as they are minted.
		s.clock.Advance(29*time.Minute + 30*time.Second - 11*time.Second)
		start = time.Now()
		rot := waitAll("rotation")
		mu.Lock()
		rotating = false
		mu.Unlock()
		close(stop)
		<-done
		p99 := func(during bool) float64 {
			mu.Lock()
			defer mu.Unlock()
			var d []time.Duration
			for i, l := range lat {
				if phase[i] == during {
					d = append(d, l)
				}
			}
			if len(d) == 0 {
				b.Error(errors.New("no catalog writes measured"))
				return 0
			}
			slices.Sort(d)
			return float64(d[len(d)*99/100].Microseconds()) / 1000
		}
		b.ReportMetric(first.Seconds(), "first-issue-s")
		b.ReportMetric(rot.Seconds(), "rotate-10k-s")
		b.ReportMetric(float64(n)/rot.Seconds(), "svids/s")
		b.ReportMetric(p99(false), "write-p99-ms-before")
		b.ReportMetric(p99(true), "write-p99-ms-during")
	}
}
