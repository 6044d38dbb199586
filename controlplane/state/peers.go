package state

import (
	"bytes"
	"fmt"
	"slices"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// Federation: foreign bundles and peerings (a foreign bundle with a peer
// name), and the exports of local services to peers.

// Exports lists exports sorted by namespace and service.
func (s *Store) Exports() []*apipb.Export {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*apipb.Export, 0, len(s.exports))
	for _, e := range s.exports {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Service < out[j].Service
	})
	return out
}

// ExportedTo reports whether a service is exported to a peer.
func (s *Store) ExportedTo(k ServiceKey, peer string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.exports[k]
	if !ok {
		return false
	}
	for _, to := range e.To {
		if to == peer || to == "*" {
			return true
		}
	}
	return false
}

// ExportedServices lists the local services exported to a peer (existing
// or not yet registered), sorted.
func (s *Store) ExportedServices(peer string) []ServiceKey {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []ServiceKey
	for k, e := range s.exports {
		for _, to := range e.To {
			if to == peer || to == "*" {
				out = append(out, k)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

func (t *tx) applySetExport(e *apipb.Export) {
	k := ServiceKey{"", e.Namespace, e.Service}
	if len(e.To) == 0 {
		delete(t.s.exports, k)
	} else {
		t.s.exports[k] = e
	}
	wake(&t.s.exportsCh)
}

// dropExportsTo removes a removed peer from every export, so that a later
// peering under the same name does not inherit them.
func (t *tx) dropExportsTo(peer string) {
	changed := false
	for k, e := range t.s.exports {
		if !slices.Contains(e.To, peer) {
			continue
		}
		n := proto.Clone(e).(*apipb.Export)
		n.To = slices.DeleteFunc(n.To, func(to string) bool { return to == peer })
		if len(n.To) == 0 {
			delete(t.s.exports, k)
		} else {
			t.s.exports[k] = n
		}
		changed = true
	}
	if changed {
		wake(&t.s.exportsCh)
	}
}

// ExportsChanged returns a channel closed at the next change of exports.
func (s *Store) ExportsChanged() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.exportsCh
}

// ForeignBundles lists the foreign bundles sorted by trust domain.
func (s *Store) ForeignBundles() []*statepb.ForeignBundle {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statepb.ForeignBundle, 0, len(s.foreign))
	for _, f := range s.foreign {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TrustDomain < out[j].TrustDomain })
	return out
}

// PeerName returns the local name of the peer of a trust domain; "" when
// it is not a peer (unknown, or a plain foreign bundle).
func (s *Store) PeerName(trustDomain string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.foreign[trustDomain].GetPeerName()
}

// ForeignBundle returns one foreign bundle.
func (s *Store) ForeignBundle(td string) (*statepb.ForeignBundle, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f, ok := s.foreign[td]
	return f, ok
}

// bundles are the foreign bundles by trust domain; those with a peer name
// are the peerings.
type bundles map[string]*statepb.ForeignBundle

// hasPeer reports whether name is a current peering.
func (b bundles) hasPeer(name string) bool {
	for _, f := range b {
		if f.PeerName == name {
			return true
		}
	}
	return false
}

// peers counts the peerings.
func (b bundles) peers() int {
	n := 0
	for _, f := range b {
		if f.PeerName != "" {
			n++
		}
	}
	return n
}

// checkPeerFree refuses a new peering whose name or trust domain is taken,
// or whose name is that of this site (nil before bootstrap).
func (b bundles) checkPeerFree(site *statepb.Bootstrap, f *statepb.ForeignBundle) error {
	if site != nil {
		if f.TrustDomain == site.TrustDomain {
			return fmt.Errorf("%s is this site's own trust domain: %w", f.TrustDomain, ErrConflict)
		}
		if f.PeerName == site.Site {
			return fmt.Errorf("a peer cannot be named %q, this site's own name: %w", f.PeerName, ErrConflict)
		}
	}
	for _, o := range b {
		if o.TrustDomain == f.TrustDomain {
			if o.PeerName != "" {
				return fmt.Errorf("trust domain %s is already federated (as %q); remove it first: %w", f.TrustDomain, o.PeerName, ErrConflict)
			}
			return fmt.Errorf("trust domain %s is already federated (as a foreign bundle); remove it first: %w", f.TrustDomain, ErrConflict)
		}
		if o.PeerName == f.PeerName {
			return fmt.Errorf("a peer named %q exists (trust domain %s): %w", f.PeerName, o.TrustDomain, ErrConflict)
		}
	}
	return nil
}

// applySetForeign upserts a foreign bundle. A bundle never goes back to a
// lower sequence; status-only updates (same bundle) do not wake watchers.
// It never turns a peering into a plain foreign bundle or back, nor
// renames a peer (peerings come and go with AddPeer and
// DeleteForeignBundle), and a peer name stays unique.
func (t *tx) applySetForeign(f *statepb.ForeignBundle) error {
	if t.s.site != nil && f.TrustDomain == t.s.site.TrustDomain {
		return fmt.Errorf("%s is this site's own trust domain: %w", f.TrustDomain, ErrConflict)
	}
	old, ok := t.s.foreign[f.TrustDomain]
	if ok && old.PeerName != f.PeerName {
		if old.PeerName != "" {
			return fmt.Errorf("%s is the trust domain of peer %q: end the peering with `strait federation delete %s`: %w", f.TrustDomain, old.PeerName, old.PeerName, ErrConflict)
		}
		return fmt.Errorf("%s is a foreign bundle, not a peering; remove it first: %w", f.TrustDomain, ErrConflict)
	}
	if !ok && f.PeerName != "" {
		if err := t.s.foreign.checkPeerFree(t.s.site, f); err != nil {
			return err
		}
	}
	if ok && f.Sequence < old.Sequence && !bytes.Equal(f.Bundle, old.Bundle) {
		return fmt.Errorf("bundle of %s: sequence %d is older than %d: %w", f.TrustDomain, f.Sequence, old.Sequence, ErrConflict)
	}
	t.s.foreign[f.TrustDomain] = proto.Clone(f).(*statepb.ForeignBundle)
	if !ok || !bytes.Equal(f.Bundle, old.Bundle) {
		wake(&t.s.identityCh)
	}
	return nil
}

// applyAddPeer creates a peering, consuming the invite when one is named
// (see AddPeer): everything or nothing.
func (t *tx) applyAddPeer(a *statepb.AddPeer) error {
	f := a.Peer
	if err := t.s.foreign.checkPeerFree(t.s.site, f); err != nil {
		return err
	}
	var acc string
	if len(a.InviteSecretHash) > 0 {
		var h [32]byte
		copy(h[:], a.InviteSecretHash)
		var ok bool
		if acc, ok = t.s.byHash[h]; !ok {
			return fmt.Errorf("unknown or revoked: %w", ErrTokenInvalid)
		}
		rec := t.s.tokens[acc]
		if rec.Token.Kind != apipb.TokenKind_TOKEN_KIND_FEDERATION {
			return fmt.Errorf("not a federation token: %w", ErrTokenInvalid)
		}
		if err := Usable(rec.Token, t.now); err != nil {
			return err
		}
		if rec.PeerName != "" && rec.PeerName != f.PeerName {
			return fmt.Errorf("the invitation was issued for peer %q, not %q: %w", rec.PeerName, f.PeerName, ErrConflict)
		}
		t.s.tokens[acc] = rec.used()
	}
	t.s.foreign[f.TrustDomain] = proto.Clone(f).(*statepb.ForeignBundle)
	wake(&t.s.identityCh)
	return nil
}

// applyDeleteForeign removes a foreign bundle; for a peer, also everything
// imported from it.
func (t *tx) applyDeleteForeign(d *statepb.DeleteForeignBundle) error {
	f, ok := t.s.foreign[d.TrustDomain]
	if !ok {
		return fmt.Errorf("foreign bundle %s: %w", d.TrustDomain, ErrNotFound)
	}
	if f.PeerName != "" {
		t.dropImports(f.PeerName, nil)
		delete(t.s.imports, f.PeerName)
		t.dropExportsTo(f.PeerName)
		t.dropIntentionsFrom(f.PeerName)
	}
	delete(t.s.foreign, d.TrustDomain)
	wake(&t.s.identityCh)
	return nil
}
