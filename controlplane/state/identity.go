package state

import (
	"bytes"
	"fmt"
	"sort"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// The site's identity: its CA roots and JWT keys (the Bootstrap record),
// workload entries and agents. Changes to any of them close identityCh.

// IdentityChanged returns a channel closed at the next change of workload
// entries or of the site CA.
func (s *Store) IdentityChanged() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.identityCh
}

// Entries lists workload entries sorted by namespace, service, ID. With a
// non-empty agent, only the entries that agent may issue.
func (s *Store) Entries(agent string) []*apipb.WorkloadEntry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*apipb.WorkloadEntry, 0, len(s.entries))
	for _, e := range s.entries {
		if agent == "" || e.Agent == agent || e.Agent == "*" {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		return a.Id < b.Id
	})
	return out
}

// Entry returns one workload entry.
func (s *Store) Entry(id string) (*apipb.WorkloadEntry, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.entries[id]
	return e, ok
}

// sameEntry reports whether two entries grant the same thing.
func sameEntry(a, b *apipb.WorkloadEntry) bool {
	if a.Namespace != b.Namespace || a.Service != b.Service || a.Agent != b.Agent || len(a.Selectors) != len(b.Selectors) {
		return false
	}
	set := make(map[string]bool, len(a.Selectors))
	for _, x := range a.Selectors {
		set[x.Type+"\x00"+x.Key+"\x00"+x.Value] = true
	}
	for _, x := range b.Selectors {
		if !set[x.Type+"\x00"+x.Key+"\x00"+x.Value] {
			return false
		}
	}
	return true
}

func (t *tx) applyCreateEntry(e *apipb.WorkloadEntry) error {
	if _, ok := t.s.entries[e.Id]; ok {
		return fmt.Errorf("workload entry %s exists: %w", e.Id, ErrConflict)
	}
	for _, o := range t.s.entries {
		if sameEntry(o, e) {
			return fmt.Errorf("an identical workload entry exists (%s): %w", o.Id, ErrConflict)
		}
	}
	n := e
	n.CreateIndex = t.index
	t.s.entries[n.Id] = n
	wake(&t.s.identityCh)
	return nil
}

func (t *tx) applyDeleteEntry(d *statepb.DeleteEntry) error {
	if _, ok := t.s.entries[d.Id]; !ok {
		return fmt.Errorf("workload entry %s: %w", d.Id, ErrNotFound)
	}
	delete(t.s.entries, d.Id)
	wake(&t.s.identityCh)
	return nil
}

// Agent returns an agent's record.
func (s *Store) Agent(node string) (*apipb.Agent, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.agents[node]
	return a, ok
}

// Agents lists agents sorted by node name.
func (s *Store) Agents() []*apipb.Agent {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*apipb.Agent, 0, len(s.agents))
	for _, a := range s.agents {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

func (t *tx) applySetAgent(a *apipb.Agent) {
	t.s.agents[a.Node] = a
	if a.Revoked {
		wake(&t.s.identityCh) // the agent's watch ends at once
	}
}

func (t *tx) applyBootstrap(b *statepb.Bootstrap, at *timestamppb.Timestamp) error {
	if t.s.site != nil {
		return fmt.Errorf("bootstrap: site %q is already bootstrapped: %w", t.s.site.Site, ErrConflict)
	}
	site := proto.Clone(b).(*statepb.Bootstrap)
	site.BundleSequence = t.index
	if site.Root != nil && site.Root.Since == nil && at != nil {
		// The first root is active from the site's creation: the command's
		// time, the same on every server.
		site.Root.Since = timestamppb.New(at.AsTime())
	}
	mt := site.ManagementToken
	site.ManagementToken = nil
	t.s.site = site
	if mt != nil {
		t.s.putToken(tokenRecordOf(mt))
	}
	return nil
}

// editSite applies f to a copy of the site, then publishes it as a bundle
// change at t.index.
func (t *tx) editSite(f func(site *statepb.Bootstrap) error) error {
	if t.s.site == nil {
		return ErrNotBootstrapped
	}
	site := proto.Clone(t.s.site).(*statepb.Bootstrap)
	if err := f(site); err != nil {
		return err
	}
	site.BundleSequence = t.index
	t.s.site = site
	wake(&t.s.identityCh)
	return nil
}

func (t *tx) applyAddJWTKey(k *statepb.JWTKey) error {
	return t.editSite(func(site *statepb.Bootstrap) error {
		for _, o := range site.JwtKeys {
			if o.Kid == k.Kid {
				return fmt.Errorf("jwt key %s exists: %w", k.Kid, ErrConflict)
			}
		}
		site.JwtKeys = append(site.JwtKeys, proto.Clone(k).(*statepb.JWTKey))
		return nil
	})
}

func (t *tx) applyPrepareRoot(r *statepb.CARoot) error {
	return t.editSite(func(site *statepb.Bootstrap) error {
		for _, o := range site.Roots {
			if o.Phase == statepb.RootPhase_ROOT_PHASE_PREPARED {
				return fmt.Errorf("a root is already prepared; it activates after the propagation delay: %w", ErrConflict)
			}
		}
		n := proto.Clone(r).(*statepb.CARoot)
		n.Phase, n.Since = statepb.RootPhase_ROOT_PHASE_PREPARED, timestamppb.New(t.now)
		site.Roots = append(site.Roots, n)
		return nil
	})
}

func (t *tx) applyActivateRoot(a *statepb.ActivateRoot) error {
	return t.editSite(func(site *statepb.Bootstrap) error {
		for i, o := range site.Roots {
			if o.Phase != statepb.RootPhase_ROOT_PHASE_PREPARED || !bytes.Equal(o.Certificate, a.Certificate) {
				continue
			}
			old := site.Root
			old.Phase, old.Since, old.DropAfter = statepb.RootPhase_ROOT_PHASE_RETIRED, timestamppb.New(t.now), a.DropAfter
			site.Root = o
			site.Root.Phase, site.Root.Since, site.Root.DropAfter = statepb.RootPhase_ROOT_PHASE_UNSPECIFIED, timestamppb.New(t.now), nil
			site.Roots[i] = old
			return nil
		}
		return fmt.Errorf("activate root: no such prepared root: %w", ErrNotFound)
	})
}

func (t *tx) applyDropRoot(d *statepb.DropRoot) error {
	return t.editSite(func(site *statepb.Bootstrap) error {
		for i, o := range site.Roots {
			if o.Phase == statepb.RootPhase_ROOT_PHASE_RETIRED && bytes.Equal(o.Certificate, d.Certificate) {
				site.Roots = append(site.Roots[:i], site.Roots[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("drop root: no such retired root: %w", ErrNotFound)
	})
}
