package controlplane

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
)

// ttlTracker turns missed heartbeats into health changes. It runs on the
// leader only and keeps heartbeat times in memory: a heartbeat costs no Raft
// write unless it changes the instance's health. A passing instance the
// tracker has no heartbeat for (every instance when a leader takes over;
// one registered without a beat) gets a full TTL of grace from the scan
// that first sees it. It forgets instances that are no longer passing or
// gone, so a revived instance never inherits an old heartbeat.
type ttlTracker struct {
	s    *Server
	mu   sync.Mutex
	last map[key]time.Time
}

type key struct{ ns, svc, id string }

func newTTLTracker(s *Server) *ttlTracker { return &ttlTracker{s: s} }

const ttlScanInterval = 250 * time.Millisecond

func (t *ttlTracker) run(ctx context.Context) {
	t.mu.Lock()
	t.last = make(map[key]time.Time)
	t.mu.Unlock()
	tick := time.NewTicker(ttlScanInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if expired := t.expired(); len(expired) > 0 {
			cmd := state.SetHealthCommand(expired, apipb.Health_HEALTH_CRITICAL)
			if _, _, err := t.s.Apply(ctx, cmd); err != nil {
				t.s.log.Warn("ttl expiry not committed", "instances", len(expired), "err", err)
			} else {
				t.s.log.Info("ttl expired", "instances", len(expired))
			}
		}
	}
}

// expired lists passing TTL instances whose last heartbeat is too old.
func (t *ttlTracker) expired() []*apipb.InstanceKey {
	now := t.s.cfg.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		t.last = make(map[key]time.Time)
	}
	var out []*apipb.InstanceKey
	passing := make(map[key]bool)
	t.s.store.EachTTLInstance(func(in *apipb.Instance) {
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

// beat records a heartbeat and revives a critical instance.
func (t *ttlTracker) beat(ctx context.Context, k *apipb.InstanceKey) error {
	in, ok := t.s.store.Instance(k)
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
	t.last[key{k.Namespace, k.Service, k.Id}] = t.s.cfg.Now()
	t.mu.Unlock()
	if in.Health == apipb.Health_HEALTH_PASSING {
		return nil
	}
	cmd := state.SetHealthCommand([]*apipb.InstanceKey{k}, apipb.Health_HEALTH_PASSING)
	_, _, err := t.s.Apply(ctx, cmd)
	return err
}
