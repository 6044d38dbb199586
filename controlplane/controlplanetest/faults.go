package controlplanetest

import (
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Faults injects network faults into real Raft transports: partitions
// (isolated servers), dropped RPCs and delayed RPCs. Every server's
// outbound RPCs pass through it, so isolating a server cuts both
// directions. This is a fault we cannot cause for real on loopback without
// root; the transports underneath are the real mTLS ones.
type Faults struct {
	mu       sync.Mutex
	isolated map[string]bool
	dropRate float64
	maxDelay time.Duration
}

// ErrInjected is the error an injected fault returns.
var ErrInjected = errors.New("injected network fault")

// NewFaults returns a fault injector with no faults.
func NewFaults() *Faults { return &Faults{isolated: make(map[string]bool)} }

// Isolate cuts node off from every other server.
func (f *Faults) Isolate(node string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.isolated[node] = true
}

// Set drops RPCs with probability drop and delays each by up to maxDelay.
func (f *Faults) Set(drop float64, maxDelay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropRate, f.maxDelay = drop, maxDelay
}

// Heal removes every fault.
func (f *Faults) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.isolated)
	f.dropRate, f.maxDelay = 0, 0
}

// fault decides the fate of one RPC from -> to.
func (f *Faults) fault(from string, to raft.ServerID) error {
	f.mu.Lock()
	cut := f.isolated[from] || f.isolated[string(to)]
	drop := f.dropRate > 0 && rand.Float64() < f.dropRate
	var delay time.Duration
	if f.maxDelay > 0 {
		delay = rand.N(f.maxDelay)
	}
	f.mu.Unlock()
	if cut || drop {
		return ErrInjected
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	return nil
}

// Wrap is an Options.WrapTransport.
func (f *Faults) Wrap(node string, t raft.Transport) raft.Transport {
	return &faultyTransport{Transport: t, f: f, node: node}
}

type faultyTransport struct {
	raft.Transport
	f    *Faults
	node string
}

// Pipelining would bypass the per-RPC faults; raft falls back to
// synchronous AppendEntries.
func (t *faultyTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

func (t *faultyTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if err := t.f.fault(t.node, id); err != nil {
		return err
	}
	return t.Transport.AppendEntries(id, target, args, resp)
}

func (t *faultyTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if err := t.f.fault(t.node, id); err != nil {
		return err
	}
	return t.Transport.RequestVote(id, target, args, resp)
}

func (t *faultyTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if err := t.f.fault(t.node, id); err != nil {
		return err
	}
	return t.Transport.InstallSnapshot(id, target, args, resp, data)
}

func (t *faultyTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	if err := t.f.fault(t.node, id); err != nil {
		return err
	}
	return t.Transport.TimeoutNow(id, target, args, resp)
}

// Close closes the wrapped transport, so Raft's shutdown releases it.
func (t *faultyTransport) Close() error {
	if c, ok := t.Transport.(raft.WithClose); ok {
		return c.Close()
	}
	return nil
}
