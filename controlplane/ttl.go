package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// ttlTracker turns missed heartbeats into health changes. It runs on the
// leader only and keeps heartbeat times in memory: a heartbeat costs no Raft
// write unless it changes the instance's health. A passing instance the
// tracker has no heartbeat for (every instance when a leader takes over;
// one registered without a beat) gets a full TTL of grace from the scan
// that first sees it. It forgets instances that are no longer passing or
// gone, so a revived instance never inherits an old heartbeat.
//
// It is the Catalog service's Heartbeat (api.Catalog) and a leader task
// (run).
type ttlTracker struct {
	node  ttlRaft
	store *state.Store
	now   func() time.Time
	log   *slog.Logger
	mu    sync.Mutex
	last  map[key]time.Time
}

// ttlRaft is what the tracker needs of the Raft node.
type ttlRaft interface {
	IsLeader() bool
	Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error)
}

var _ api.Catalog = (*ttlTracker)(nil)

type key struct{ ns, svc, id string }

const ttlScanInterval = 250 * time.Millisecond

// run expires instances while this server leads (a leader task).
func (t *ttlTracker) run(ctx context.Context) error {
	t.mu.Lock()
	t.last = make(map[key]time.Time)
	t.mu.Unlock()
	tick := time.NewTicker(ttlScanInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if expired := t.expired(); len(expired) > 0 {
			cmd := state.SetHealthCommand(expired, apipb.Health_HEALTH_CRITICAL)
			if _, _, err := t.node.Apply(ctx, cmd); err != nil {
				t.log.Warn("ttl expiry not committed", "instances", len(expired), "err", err)
			} else {
				t.log.Info("ttl expired", "instances", len(expired))
			}
		}
	}
}

// expired lists passing TTL instances whose last heartbeat is too old.
func (t *ttlTracker) expired() []*apipb.InstanceKey {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		t.last = make(map[key]time.Time)
	}
	var out []*apipb.InstanceKey
	passing := make(map[key]bool)
	t.store.EachTTLInstance(func(in *apipb.Instance) {
		if in.Health != apipb.Health_HEALTH_PASSING {
			return
		}
		k := key{in.Namespace, in.Service, in.Id}
		passing[k] = true
		last, ok := t.last[k]
		if !ok {
			t.last[k] = now
			return
		}
		if now.Sub(last) > in.Ttl.AsDuration() {
			out = append(out, &apipb.InstanceKey{Namespace: in.Namespace, Service: in.Service, Id: in.Id})
		}
	})
	for k := range t.last {
		if !passing[k] {
			delete(t.last, k)
		}
	}
	return out
}

// Heartbeat records a heartbeat of a TTL instance and revives it when
// it is critical (leader only: api.ErrNotLeader otherwise).
func (t *ttlTracker) Heartbeat(ctx context.Context, k *apipb.InstanceKey) error {
	if !t.node.IsLeader() {
		return api.ErrNotLeader
	}
	in, ok := t.store.Instance(k)
	if !ok {
		return fmt.Errorf("instance %s of %s/%s: %w", k.Id, k.Namespace, k.Service, state.ErrNotFound)
	}
	if in.Ttl == nil {
		return fmt.Errorf("instance %s has no ttl; register it with one to use heartbeats: %w", k.Id, state.ErrConflict)
	}
	t.mu.Lock()
	if t.last == nil {
		t.last = make(map[key]time.Time)
	}
	t.last[key{k.Namespace, k.Service, k.Id}] = t.now()
	t.mu.Unlock()
	if in.Health == apipb.Health_HEALTH_PASSING {
		return nil
	}
	cmd := state.SetHealthCommand([]*apipb.InstanceKey{k}, apipb.Health_HEALTH_PASSING)
	_, _, err := t.node.Apply(ctx, cmd)
	return err
}
