package state

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"time"

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
		case *apipb.Change_Service:
			if x.Service.Namespace == "" || x.Service.Name == "" {
				return bad("service without namespace or name")
			}
		case *apipb.Change_Instance:
			if x.Instance.Namespace == "" || x.Instance.Service == "" || x.Instance.Id == "" {
				return bad("instance without namespace, service or id")
			}
		case *apipb.Change_ServiceDeleted:
			if x.ServiceDeleted.Namespace == "" || x.ServiceDeleted.Name == "" {
				return bad("deleted service without namespace or name")
			}
		case *apipb.Change_InstanceDeleted:
			if x.InstanceDeleted.Namespace == "" || x.InstanceDeleted.Service == "" || x.InstanceDeleted.Id == "" {
				return bad("deleted instance without namespace, service or id")
			}
		default:
			return bad("empty change")
		}
	}
	return nil
}

// peerExists reports whether name is a current peering. Lock held.
func (s *Store) peerExists(name string) bool {
	for _, f := range s.foreign {
		if f.PeerName == name {
			return true
		}
	}
	return false
}

func (s *Store) applyImport(index uint64, b *statepb.ImportBatch, now time.Time, ch *changes) error {
	if !s.peerExists(b.Peer) {
		return fmt.Errorf("peer %q: %w", b.Peer, ErrNotFound)
	}
	imp := &statepb.PeerImport{Peer: b.Peer}
	if old, ok := s.imports[b.Peer]; ok {
		imp = proto.Clone(old).(*statepb.PeerImport)
	}
	applies := b.Resync || b.Version >= imp.Version
	var sizes []int64
	if applies {
		var err error
		if sizes, err = s.checkImportQuota(b); err != nil {
			return err
		}
	}
	imp.LastContact = timestamppb.New(now)
	if b.Gateways != nil && !slices.Equal(imp.Gateways, b.Gateways.Addresses) {
		imp.Gateways = append([]string(nil), b.Gateways.Addresses...)
		s.meshChanged() // the gateways' configuration names them
	}
	// A delta older than what is applied is a duplicate from a stream that
	// has since been replaced; a resync is always current.
	if applies {
		imp.Version = b.Version
		ic := s.importContext(index, b)
		if b.Resync {
			s.resyncImports(ic, b, sizes, ch)
		} else {
			for i, c := range b.Changes {
				s.applyImportChange(ic, c, sizes[i], ch)
			}
		}
	}
	s.imports[b.Peer] = imp
	return nil
}

// resyncImports makes the peer's imports exactly the batch's contents.
func (s *Store) resyncImports(ic *importContext, b *statepb.ImportBatch, sizes []int64, ch *changes) {
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
	s.dropImports(b.Peer, keep, ch)
	for i, c := range b.Changes {
		switch c.Change.(type) {
		case *apipb.Change_Service, *apipb.Change_Instance:
			s.applyImportChange(ic, c, sizes[i], ch)
		}
	}
}

// dropImports removes the peer's imported services and instances that
// keep does not name (all of them when keep is nil). Lock held.
func (s *Store) dropImports(peer string, keep map[ServiceKey]map[string]bool, ch *changes) {
	var gone []ServiceKey
	for k := range s.services {
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
			s.deleteService(k, ch)
			continue
		}
		byID := s.instances[k]
		var drop []string
		for id := range byID {
			if !ids[id] {
				drop = append(drop, id)
			}
		}
		sort.Strings(drop)
		u := s.usage(peer)
		for _, id := range drop {
			ch.instanceDeleted(byID[id])
			u.Instances--
			u.Bytes -= instanceSize(byID[id])
			delete(byID, id)
			s.nInst--
		}
	}
	if u := s.use[peer]; u != nil && u.zero() {
		delete(s.use, peer)
	}
}

// deleteService removes a service and its instances. Lock held.
func (s *Store) deleteService(k ServiceKey, ch *changes) {
	byID := s.instances[k]
	ids := make([]string, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ch.instanceDeleted(byID[id])
	}
	s.nInst -= len(byID)
	if k.Peer != "" {
		u, svc := s.usage(k.Peer), s.services[k]
		u.Services--
		u.Instances -= len(byID)
		u.Bytes -= serviceSize(svc)
		for _, in := range byID {
			u.Bytes -= instanceSize(in)
		}
		if svc.GetVirtualIp() == "" {
			u.WithoutVIP--
		}
	}
	s.releaseVIP(s.services[k])
	delete(s.instances, k)
	delete(s.services, k)
	ch.serviceDeleted(k)
}

// importContext is what applying one batch's changes needs.
type importContext struct {
	index      uint64
	peer, cidr string
	// vipQuota is how many virtual IPs the peer may hold; -1: no quota
	// (a batch without limits, from before quotas existed).
	vipQuota int
}

func (s *Store) importContext(index uint64, b *statepb.ImportBatch) *importContext {
	ic := &importContext{index: index, peer: b.Peer, cidr: b.VirtualIpCidr, vipQuota: -1}
	if b.Limits != nil {
		ic.vipQuota = s.vipQuota(b.VirtualIpCidr, b.Limits)
	}
	return ic
}

// applyImportChange upserts or deletes one imported record. Records are
// copied and stamped with the peer and local indexes; an instance of a
// service that was not sent first is ignored (the exporter always sends
// the service before its instances). size is the change's ImportedSize.
func (s *Store) applyImportChange(ic *importContext, c *apipb.Change, size int64, ch *changes) {
	peer := ic.peer
	switch x := c.Change.(type) {
	case *apipb.Change_Service:
		svc := proto.Clone(x.Service).(*apipb.Service)
		svc.Peer, svc.VirtualIp = peer, ""
		k := KeyOf(svc)
		old, existed := s.services[k]
		if existed {
			svc.VirtualIp = old.VirtualIp
		}
		u := s.usage(peer)
		if svc.VirtualIp == "" && (ic.vipQuota < 0 || u.VIPs < ic.vipQuota) {
			if a, ok := s.allocateVIP(ic.cidr); ok {
				svc.VirtualIp = a.String()
			}
		}
		s.putService(ic.index, k, svc, ch)
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
		s.trackVIP(svc)
	case *apipb.Change_Instance:
		in := proto.Clone(x.Instance).(*apipb.Instance)
		in.Peer, in.Ttl = peer, nil
		if in.Health == apipb.Health_HEALTH_UNSPECIFIED {
			in.Health = apipb.Health_HEALTH_PASSING
		}
		if byID, ok := s.instances[KeyOfInstance(in)]; ok {
			u := s.usage(peer)
			if prev, ok := byID[in.Id]; ok {
				u.Bytes -= instanceSize(prev)
			} else {
				u.Instances++
			}
			u.Bytes += size
			s.putInstance(ic.index, byID, in, ch)
		}
	case *apipb.Change_ServiceDeleted:
		k := ServiceKey{peer, x.ServiceDeleted.Namespace, x.ServiceDeleted.Name}
		if _, ok := s.services[k]; ok {
			s.deleteService(k, ch)
		}
	case *apipb.Change_InstanceDeleted:
		k := x.InstanceDeleted
		byID := s.instances[ServiceKey{peer, k.Namespace, k.Service}]
		if in, ok := byID[k.Id]; ok {
			u := s.usage(peer)
			u.Instances--
			u.Bytes -= instanceSize(in)
			ch.instanceDeleted(in)
			delete(byID, k.Id)
			s.nInst--
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

// GatewayAddresses lists the WAN addresses of this site's passing
// gateways, sorted.
func (s *Store) GatewayAddresses() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for _, in := range s.instances[ServiceKey{"", GatewayNamespace, GatewayService}] {
		port, ok := in.Ports[GatewayWANPort]
		if !ok || in.Health != apipb.Health_HEALTH_PASSING {
			continue
		}
		out = append(out, net.JoinHostPort(in.Address, strconv.Itoa(int(port))))
	}
	sort.Strings(out)
	return out
}
