package state

import (
	"fmt"
	"sort"
	"strings"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// Intentions and gateways: the mesh configuration gateways are built
// from. Changes to either close meshCh.

func intentionKey(src, dst string) string { return src + "\x00" + dst }

// MeshChanged returns a channel closed at the next change of intentions
// or gateways.
func (s *Store) MeshChanged() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.meshCh
}

func (t *tx) applySetIntention(in *apipb.Intention) {
	k := intentionKey(in.Source, in.Destination)
	n := in
	n.CreateIndex, n.ModifyIndex = t.index, t.index
	if old, ok := t.s.intentions[k]; ok {
		n.CreateIndex = old.CreateIndex
	}
	t.s.intentions[k] = n
	wake(&t.s.meshCh)
}

func (t *tx) applyDeleteIntention(d *statepb.DeleteIntention) error {
	k := intentionKey(d.Source, d.Destination)
	if _, ok := t.s.intentions[k]; !ok {
		return fmt.Errorf("intention %s -> %s: %w", d.Source, d.Destination, ErrNotFound)
	}
	delete(t.s.intentions, k)
	wake(&t.s.meshCh)
	return nil
}

// dropIntentionsFrom removes every intention whose source is a removed
// peer's site, so that a later peer under the same name is granted
// nothing.
func (t *tx) dropIntentionsFrom(peer string) {
	changed := false
	for k, in := range t.s.intentions {
		if strings.HasPrefix(in.Source, peer+"/") {
			delete(t.s.intentions, k)
			changed = true
		}
	}
	if changed {
		wake(&t.s.meshCh)
	}
}

// Intentions lists intentions sorted by destination, then source.
func (s *Store) Intentions() []*apipb.Intention {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*apipb.Intention, 0, len(s.intentions))
	for _, in := range s.intentions {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Destination != out[j].Destination {
			return out[i].Destination < out[j].Destination
		}
		return out[i].Source < out[j].Source
	})
	return out
}

func (t *tx) applySetGateway(g *apipb.GatewayRecord) {
	t.s.gateways[g.Name] = g
	wake(&t.s.meshCh)
}

// Gateway returns a gateway's record.
func (s *Store) Gateway(name string) (*apipb.GatewayRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, ok := s.gateways[name]
	return g, ok
}

// Gateways lists gateways sorted by name.
func (s *Store) Gateways() []*apipb.GatewayRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*apipb.GatewayRecord, 0, len(s.gateways))
	for _, g := range s.gateways {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
