package controlplane_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// The model: each instance ID is a register holding its address ("" when
// absent). Writes register the instance with a unique address; reads are
// consistent-mode GetService calls.
type linInput struct {
	write bool
	key   string
	value string
}

var registerModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range h {
			k := op.Input.(linInput).key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range byKey {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(linInput)
		if in.write {
			return true, in.value
		}
		return output.(string) == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(linInput)
		if in.write {
			return fmt.Sprintf("put(%s, %s)", in.key, in.value)
		}
		return fmt.Sprintf("get(%s) -> %q", in.key, output)
	},
}

// TestLinearizableUnderFaults drives concurrent writers and consistent
// readers against every server of a 3-server site while a nemesis
// partitions servers and drops and delays Raft messages, then checks the
// history with porcupine and that the replicas converge.
func TestLinearizableUnderFaults(t *testing.T) {
	duration := 6 * time.Second
	if os.Getenv("STRAIT_LONG") != "" {
		duration = 60 * time.Second
	}
	faults := controlplanetest.NewFaults()
	c := controlplanetest.Start(t, 3, controlplanetest.Options{WrapTransport: faults.Wrap, InMemoryRaft: true})
	register(t, c.Client(0), "lin", "seed") // defines the service
	start := time.Now()
	var (
		mu      sync.Mutex
		history []porcupine.Operation
		counter atomic.Uint32
		ops     atomic.Int64
	)
	record := func(op porcupine.Operation) {
		mu.Lock()
		history = append(history, op)
		mu.Unlock()
	}
	now := func() int64 { return int64(time.Since(start)) }
	keys := []string{"k0", "k1", "k2"}

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	for client := 0; client < 6; client++ {
		cl := c.Client(client % len(c.Nodes))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				key := keys[rand.IntN(len(keys))]
				opCtx, opCancel := context.WithTimeout(context.Background(), 2*time.Second)
				call := now()
				if rand.IntN(2) == 0 {
					n := counter.Add(1)
					value := fmt.Sprintf("10.%d.%d.%d", byte(n>>16), byte(n>>8), byte(n))
					_, err := cl.Catalog.Register(opCtx, &apipb.RegisterRequest{
						Service:  &apipb.Service{Namespace: "payments", Name: "lin", Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
						Instance: &apipb.Instance{Id: key, Address: value, Ports: map[string]uint32{"http": 80}},
					})
					ret := now()
					if err != nil {
						ret = math.MaxInt64 // may or may not have taken effect
					}
					record(porcupine.Operation{ClientId: client, Input: linInput{write: true, key: key, value: value}, Call: call, Return: ret})
				} else {
					resp, err := cl.Catalog.GetService(opCtx, &apipb.GetServiceRequest{Namespace: "payments", Name: "lin", Mode: apipb.ReadMode_READ_MODE_CONSISTENT})
					ret := now()
					if err == nil {
						got := ""
						for _, in := range resp.Instances {
							if in.Id == key {
								got = in.Address
							}
						}
						record(porcupine.Operation{ClientId: client, Input: linInput{key: key}, Output: got, Call: call, Return: ret})
					}
				}
				opCancel()
				ops.Add(1)
			}
		}()
	}
	// The nemesis.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			switch rand.IntN(4) {
			case 0:
				faults.Isolate(c.Nodes[rand.IntN(len(c.Nodes))].ID)
			case 1:
				faults.Set(0.2, 0)
			case 2:
				faults.Set(0, 30*time.Millisecond)
			case 3:
				faults.Heal()
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(300+rand.IntN(700)) * time.Millisecond):
			}
			faults.Heal()
		}
	}()
	wg.Wait()
	faults.Heal()

	completed := 0
	for _, op := range history {
		if op.Return != math.MaxInt64 {
			completed++
		}
	}
	t.Logf("%d operations, %d completed and recorded", ops.Load(), completed)
	if completed < 20 {
		t.Fatalf("only %d operations completed: the site made no progress under faults", completed)
	}
	res, info := porcupine.CheckOperationsVerbose(registerModel, history, time.Minute)
	if res != porcupine.Ok {
		f, _ := os.CreateTemp("", "strait-linearizability-*.html")
		porcupine.Visualize(registerModel, info, f)
		f.Close()
		t.Fatalf("history is %s; visualization in %s", res, f.Name())
	}
	// After healing, every replica converges to the same catalog.
	c.WaitConverged()
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		var want []*apipb.Instance
		for i, n := range c.Nodes {
			_, got, _, _ := n.Server.Store().Service(stateKey("payments", "lin"), false)
			if i == 0 {
				want = got
				continue
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("%s differs from %s", n.ID, c.Nodes[0].ID)
			}
		}
		return nil
	})
}
