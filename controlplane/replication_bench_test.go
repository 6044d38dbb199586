package controlplane_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/internal/wan"
)

// BenchmarkPropagation: two 3-server sites (durable Raft, production
// timeouts) joined over an emulated WAN with 25 ms one-way delay. Site B
// exports a service with 10,000 instances to A; each iteration registers a
// burst of 1,000 new instances in B from 64 concurrent clients and
// measures, for each, the time from issuing the registration in B to its
// arrival in the catalog of A's leader; and the bytes the WAN carried per
// registration (TLS records both ways, replication and acknowledgements).
// Without delay, the same run shows what the WAN adds.
func BenchmarkPropagation(b *testing.B) {
	for _, delay := range []time.Duration{0, 25 * time.Millisecond} {
		b.Run(fmt.Sprintf("delay=%s", delay), func(b *testing.B) { benchPropagation(b, delay) })
	}
}

func benchPropagation(b *testing.B, delay time.Duration) {
	const (
		exported = 10000
		burst    = 1000
		writers  = 64
	)
	w := wan.New(delay)
	b.Cleanup(func() { w.Close() })
	site := func(name string) *controlplanetest.Cluster {
		return controlplanetest.Start(b, 3, controlplanetest.Options{Site: name, BundleEndpoint: true, Raft: &controlplane.RaftTimeouts{},
			Tweak: func(c *controlplane.Config) { c.PeerDialer = w.Dial }})
	}
	a, bs := site("site-a"), site("site-b")
	federate(b, a, bs, "site-b")
	bcl := bs.Client(bs.Leader())
	ctx := context.Background()
	if _, err := bcl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "bench", Service: "api", To: []string{"site-a"}}}); err != nil {
		b.Fatal(err)
	}
	registerRange := func(from, to int, issued []time.Time) {
		var next atomic.Int64
		next.Store(int64(from))
		var wg sync.WaitGroup
		for range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < to; i = int(next.Add(1)) - 1 {
					if issued != nil {
						issued[i-from] = time.Now()
					}
					if _, err := bcl.Catalog.Register(ctx, benchRequest(i)); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	registerRange(0, exported, nil)
	leaderA := a.Nodes[a.Leader()].Server.Store()
	key := func() (n int) {
		_, insts, _, _ := leaderA.Service(state.ServiceKey{Peer: "site-b", Namespace: "bench", Name: "api"}, false)
		return len(insts)
	}
	controlplanetest.WaitFor(b, 60*time.Second, func() error {
		if n := key(); n != exported {
			return fmt.Errorf("A imports %d of %d", n, exported)
		}
		return nil
	})

	next := exported
	var all []time.Duration
	var wanBytes uint64
	for b.Loop() {
		from := next
		next += burst
		issued := make([]time.Time, burst)
		arrived := make([]time.Time, burst)
		var got atomic.Int64
		sub := leaderA.Subscribe(leaderA.Index())
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for got.Load() < burst {
				ev, err := sub.Next(wctx)
				if err != nil {
					return
				}
				now := time.Now()
				for _, c := range ev.Changes {
					in := c.GetInstance()
					if in == nil || in.Peer != "site-b" {
						continue
					}
					var i int
					if _, err := fmt.Sscanf(in.Id, "i%d", &i); err == nil && i >= from && i < from+burst && arrived[i-from].IsZero() {
						arrived[i-from] = now
						got.Add(1)
					}
				}
			}
		}()
		up0, down0 := w.Bytes()
		registerRange(from, from+burst, issued)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			b.Fatalf("only %d of %d registrations arrived within 60s", got.Load(), burst)
		}
		cancel()
		// Let the last acknowledgements cross before counting bytes.
		time.Sleep(4 * delay)
		up1, down1 := w.Bytes()
		for i := range burst {
			all = append(all, arrived[i].Sub(issued[i]))
		}
		wanBytes += up1 - up0 + down1 - down0
	}
	// Over all bursts of the run.
	b.ReportMetric(float64(percentile(all, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(all, 0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(wanBytes)/float64(len(all)), "wan-B/change")
}
