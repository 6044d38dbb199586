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
	imp.LastContact = timestamppb.New(now)
	if b.Gateways != nil && !slices.Equal(imp.Gateways, b.Gateways.Addresses) {
		imp.Gateways = append([]string(nil), b.Gateways.Addresses...)
		s.meshChanged() // the gateways' configuration names them
	}
	// A delta older than what is applied is a duplicate from a stream that
	// has since been replaced; a resync is always current.
	if b.Resync || b.Version >= imp.Version {
		imp.Version = b.Version
		if b.Resync {
			s.resyncImports(index, b, ch)
		} else {
			for _, c := range b.Changes {
				s.applyImportChange(index, b.Peer, b.VirtualIpCidr, c, ch)
			}
		}
	}
	s.imports[b.Peer] = imp
	return nil
}

// resyncImports makes the peer's imports exactly the batch's contents.
func (s *Store) resyncImports(index uint64, b *statepb.ImportBatch, ch *changes) {
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
	for _, c := range b.Changes {
		switch c.Change.(type) {
		case *apipb.Change_Service, *apipb.Change_Instance:
			s.applyImportChange(index, b.Peer, b.VirtualIpCidr, c, ch)
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
		for _, id := range drop {
			ch.instanceDeleted(byID[id])
			delete(byID, id)
			s.nInst--
		}
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
	s.releaseVIP(s.services[k])
	delete(s.instances, k)
	delete(s.services, k)
	ch.serviceDeleted(k)
}

// applyImportChange upserts or deletes one imported record. Records are
// copied and stamped with the peer and local indexes; an instance of a
// service that was not sent first is ignored (the exporter always sends
// the service before its instances).
func (s *Store) applyImportChange(index uint64, peer, cidr string, c *apipb.Change, ch *changes) {
	switch x := c.Change.(type) {
	case *apipb.Change_Service:
		svc := proto.Clone(x.Service).(*apipb.Service)
		svc.Peer, svc.VirtualIp = peer, ""
		k := KeyOf(svc)
		if old, ok := s.services[k]; ok {
			svc.VirtualIp = old.VirtualIp
		}
		if svc.VirtualIp == "" {
			if a, ok := s.allocateVIP(cidr); ok {
				svc.VirtualIp = a.String()
			}
		}
		s.putService(index, k, svc, ch)
		s.trackVIP(svc)
	case *apipb.Change_Instance:
		in := proto.Clone(x.Instance).(*apipb.Instance)
		in.Peer, in.Ttl = peer, nil
		if in.Health == apipb.Health_HEALTH_UNSPECIFIED {
			in.Health = apipb.Health_HEALTH_PASSING
		}
		if byID, ok := s.instances[KeyOfInstance(in)]; ok {
			s.putInstance(index, byID, in, ch)
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
	s.mu.RLock()
	defer s.mu.RUnlock()
	for k := range s.services {
		if k.Peer == peer {
			services++
			instances += len(s.instances[k])
		}
	}
	return services, instances
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
