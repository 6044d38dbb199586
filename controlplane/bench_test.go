package controlplane_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// These benchmarks run a fixed workload per iteration (use -benchtime 1x)
// against real servers with durable Raft storage (bbolt, fsync on) and
// production Raft timeouts, through the gRPC API with mTLS. They report
// throughput and latency percentiles as custom metrics; BENCHMARKS.md has
// the figures and the command.

func benchRequest(i int) *apipb.RegisterRequest {
	return &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "bench", Name: "api", Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
		Instance: &apipb.Instance{Id: fmt.Sprintf("i%d", i), Address: fmt.Sprintf("10.%d.%d.%d", byte(i>>16), byte(i>>8), byte(i)), Ports: map[string]uint32{"http": 8080}, Zone: "zone-a"},
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[int(float64(len(d)-1)*p)]
}

func startBenchSite(b *testing.B, servers int) (*controlplanetest.Cluster, *apiclient.Client) {
	c := controlplanetest.Start(b, servers, controlplanetest.Options{Raft: &controlplane.RaftTimeouts{}})
	return c, c.Client(c.Leader())
}

// BenchmarkRegisterThroughput: closed loop, `writers` concurrent clients.
func BenchmarkRegisterThroughput(b *testing.B) {
	for _, servers := range []int{1, 3} {
		for _, writers := range []int{1, 64, 256} {
			b.Run(fmt.Sprintf("servers=%d/writers=%d", servers, writers), func(b *testing.B) {
				_, cl := startBenchSite(b, servers)
				const total = 20000
				n := total
				if writers == 1 {
					n = 1000
				}
				for b.Loop() {
					var next atomic.Int64
					lat := make([]time.Duration, n)
					var wg sync.WaitGroup
					start := time.Now()
					for w := 0; w < writers; w++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for {
								i := int(next.Add(1)) - 1
								if i >= n {
									return
								}
								t0 := time.Now()
								if _, err := cl.Catalog.Register(context.Background(), benchRequest(i)); err != nil {
									b.Error(err)
									return
								}
								lat[i] = time.Since(t0)
							}
						}()
					}
					wg.Wait()
					el := time.Since(start)
					b.ReportMetric(float64(n)/el.Seconds(), "regs/s")
					b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
				}
			})
		}
	}
}

// BenchmarkRegisterLatencyAtRate: open loop at a fixed rate, so queueing in
// the client does not hide server latency.
func BenchmarkRegisterLatencyAtRate(b *testing.B) {
	for _, servers := range []int{1, 3} {
		b.Run(fmt.Sprintf("servers=%d/rate=2000", servers), func(b *testing.B) {
			_, cl := startBenchSite(b, servers)
			const rate, dur = 2000, 5 * time.Second
			for b.Loop() {
				n := int(rate * dur.Seconds())
				lat := make([]time.Duration, n)
				var wg sync.WaitGroup
				interval := time.Second / rate
				start := time.Now()
				for i := 0; i < n; i++ {
					due := start.Add(time.Duration(i) * interval)
					time.Sleep(time.Until(due))
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := cl.Catalog.Register(context.Background(), benchRequest(i)); err != nil {
							b.Error(err)
						}
						lat[i] = time.Since(due) // from when it was due: includes any sender lag
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
			}
		})
	}
}

// BenchmarkMemory100kInstances: heap held by one server with 100,000 instances.
func BenchmarkMemory100kInstances(b *testing.B) {
	for b.Loop() {
		c, cl := startBenchSite(b, 1)
		heap := func() uint64 {
			runtime.GC()
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			return m.HeapAlloc
		}
		before := heap()
		const n = 100000
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < 128; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
					if _, err := cl.Catalog.Register(context.Background(), benchRequest(i)); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if _, got := c.Nodes[0].Server.Store().Counts(); got != n {
			b.Fatalf("%d instances", got)
		}
		after := heap()
		b.ReportMetric(float64(after-before)/(1<<20), "MiB")
		b.ReportMetric(float64(after-before)/n, "B/instance")
	}
}
