package state

import (
	"fmt"
	"slices"
	"sort"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// Imported services live in the catalog beside local ones, keyed by their
// peer: the same maps, the same watch, the same reads. Only ImportBatch
// commands (from the replication stream of that peer) write them, and only
// while the peering exists; removing the peering removes them.

// Gateways register in the catalog as this service; their "wan" port is
// what peers dial. The replication stream announces them to peers.
const (
	GatewayNamespace = "strait"
	GatewayService   = "gateway"
	GatewayWANPort   = "wan"
)

func wellFormedImport(b *statepb.ImportBatch) error {
	bad := func(what string) error { return fmt.Errorf("import batch: %s: %w", what, ErrMalformed) }
	if b.Peer == "" {
		return bad("no peer")
	}
	for _, c := range b.Changes {
		switch x := c.GetChange().(type) {
		case *statepb.Change_Service:
			if x.Service.Namespace == "" || x.Service.Name == "" {
				return bad("service without namespace or name")
			}
		case *statepb.Change_Instance:
			if x.Instance.Namespace == "" || x.Instance.Service == "" || x.Instance.Id == "" {
				return bad("instance without namespace, service or id")
			}
		case *statepb.Change_ServiceDeleted:
			if x.ServiceDeleted.Namespace == "" || x.ServiceDeleted.Name == "" {
				return bad("deleted service without namespace or name")
			}
		case *statepb.Change_InstanceDeleted:
			if x.InstanceDeleted.Namespace == "" || x.InstanceDeleted.Service == "" || x.InstanceDeleted.Id == "" {
				return bad("deleted instance without namespace, service or id")
			}
		default:
			return bad("empty change")
		}
	}
	return nil
}

func (t *tx) applyImport(b *ImportBatch) error {
	if !t.s.foreign.hasPeer(b.Peer) {
		return fmt.Errorf("peer %q: %w", b.Peer, ErrNotFound)
	}
	imp := &statepb.PeerImport{Peer: b.Peer}
	if old, ok := t.s.imports[b.Peer]; ok {
		imp = proto.Clone(old).(*statepb.PeerImport)
	}
	applies := b.Resync || b.Version >= imp.Version
	var sizes []int64
	if applies {
		var err error
		if sizes, err = t.s.quota.check(&t.s.catalog, b); err != nil {
			return err
		}
	}
	imp.LastContact = timestamppb.New(t.now)
	if b.Gateways != nil && !slices.Equal(imp.Gateways, b.Gateways.Addresses) {
		imp.Gateways = append([]string(nil), b.Gateways.Addresses...)
		wake(&t.s.meshCh) // the gateways' configuration names them
	}
	// A delta older than what is applied is a duplicate from a stream that
	// has since been replaced; a resync is always current.
	if applies {
		imp.Version = b.Version
		ic := t.importContext(b)
		if b.Resync {
			t.resyncImports(ic, b, sizes)
		} else {
			for i, c := range b.Changes {
				t.applyImportChange(ic, c, sizes[i])
			}
		}
	}
	t.s.imports[b.Peer] = imp
	return nil
}

// resyncImports makes the peer's imports exactly the batch's contents.
func (t *tx) resyncImports(ic *importContext, b *ImportBatch, sizes []int64) {
	keep := make(map[ServiceKey]map[string]bool)
	for _, c := range b.Changes {
		switch x := c.Change.(type) {
		case *apipb.Change_Service:
			k := ServiceKey{b.Peer, x.Service.Namespace, x.Service.Name}
			if keep[k] == nil {
				keep[k] = make(map[string]bool)
			}
		case *apipb.Change_Instance:
			k := ServiceKey{b.Peer, x.Instance.Namespace, x.Instance.Service}
			if keep[k] != nil {
				keep[k][x.Instance.Id] = true
			}
		}
	}
	t.dropImports(b.Peer, keep)
	for i, c := range b.Changes {
		switch c.Change.(type) {
		case *apipb.Change_Service, *apipb.Change_Instance:
			t.applyImportChange(ic, c, sizes[i])
		}
	}
}

// dropImports removes the peer's imported services and instances that
// keep does not name (all of them when keep is nil).
func (t *tx) dropImports(peer string, keep map[ServiceKey]map[string]bool) {
	var gone []ServiceKey
	for k := range t.s.services {
		if k.Peer == peer {
			gone = append(gone, k)
		}
	}
	sort.Slice(gone, func(i, j int) bool {
		if gone[i].Namespace != gone[j].Namespace {
			return gone[i].Namespace < gone[j].Namespace
		}
		return gone[i].Name < gone[j].Name
	})
	for _, k := range gone {
		ids, kept := keep[k]
		if !kept {
			t.deleteService(k)
			continue
		}
		byID := t.s.instances[k]
		var drop []string
		for id := range byID {
			if !ids[id] {
				drop = append(drop, id)
			}
		}
		sort.Strings(drop)
		u := t.s.quota.usage(peer)
		for _, id := range drop {
			t.ch.instanceDeleted(byID[id])
			u.Instances--
			u.Bytes -= instanceSize(byID[id])
			delete(byID, id)
			t.s.nInst--
		}
	}
	t.s.quota.forgetIfZero(peer)
}

// importContext is what applying one batch's changes needs.
type importContext struct {
	peer, cidr string
	// vipQuota is how many virtual IPs the peer may hold; -1: no quota
	// (a batch without limits, from before quotas existed).
	vipQuota int
}

func (t *tx) importContext(b *ImportBatch) *importContext {
	ic := &importContext{peer: b.Peer, cidr: b.VirtualIPCIDR, vipQuota: -1}
	if b.Limits != nil {
		ic.vipQuota = t.s.vip.share(b.VirtualIPCIDR, t.s.foreign.peers(), b.Limits)
	}
	return ic
}

// applyImportChange upserts or deletes one imported record. Records are
// copied and stamped with the peer and local indexes; an instance of a
// service that was not sent first is ignored (the exporter always sends
// the service before its instances). size is the change's ImportedSize.
func (t *tx) applyImportChange(ic *importContext, c *apipb.Change, size int64) {
	peer := ic.peer
	switch x := c.Change.(type) {
	case *apipb.Change_Service:
		svc := x.Service
		svc.Peer, svc.VirtualIp = peer, ""
		k := KeyOf(svc)
		old, existed := t.s.services[k]
		if existed {
			svc.VirtualIp = old.VirtualIp
		}
		u := t.s.quota.usage(peer)
		if svc.VirtualIp == "" && (ic.vipQuota < 0 || u.VIPs < ic.vipQuota) {
			if a, ok := t.s.vip.allocate(ic.cidr); ok {
				svc.VirtualIp = a.String()
			}
		}
		t.putService(k, svc)
		if existed {
			u.Bytes -= serviceSize(old)
			if old.VirtualIp == "" {
				u.WithoutVIP--
			}
		} else {
			u.Services++
		}
		u.Bytes += size
		if svc.VirtualIp == "" {
			u.WithoutVIP++
		}
		t.trackVIP(svc)
	case *apipb.Change_Instance:
		in := x.Instance
		in.Peer, in.Ttl = peer, nil
		if in.Health == apipb.Health_HEALTH_UNSPECIFIED {
			in.Health = apipb.Health_HEALTH_PASSING
		}
		if byID, ok := t.s.instances[KeyOfInstance(in)]; ok {
			u := t.s.quota.usage(peer)
			if prev, ok := byID[in.Id]; ok {
				u.Bytes -= instanceSize(prev)
			} else {
				u.Instances++
			}
			u.Bytes += size
			t.putInstance(byID, in)
		}
	case *apipb.Change_ServiceDeleted:
		k := ServiceKey{peer, x.ServiceDeleted.Namespace, x.ServiceDeleted.Name}
		if _, ok := t.s.services[k]; ok {
			t.deleteService(k)
		}
	case *apipb.Change_InstanceDeleted:
		k := x.InstanceDeleted
		byID := t.s.instances[ServiceKey{peer, k.Namespace, k.Service}]
		if in, ok := byID[k.Id]; ok {
			u := t.s.quota.usage(peer)
			u.Instances--
			u.Bytes -= instanceSize(in)
			t.ch.instanceDeleted(in)
			delete(byID, k.Id)
			t.s.nInst--
		}
	}
}

// PeerImport returns the replication state of a peer's imports.
func (s *Store) PeerImport(peer string) (*statepb.PeerImport, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.imports[peer]
	return p, ok
}

// ImportCounts counts the services and instances imported from a peer.
func (s *Store) ImportCounts(peer string) (services, instances int) {
	u := s.ImportUsage(peer)
	return u.Services, u.Instances
}
