package dns

import (
	"net/netip"
	"sync"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// The view is the catalog as DNS needs it, kept current by a watch stream:
// services with their named ports and their instances' addresses and
// health. Queries read it under a read lock; the watch loop is the only
// writer. A resync builds a fresh view and swaps it in when complete, so
// queries never see a half-loaded catalog.

// svcKey names a service: local when peer is empty, else imported.
type svcKey struct{ peer, ns, name string }

type instance struct {
	id      string
	addr    netip.Addr
	ports   map[string]uint32
	passing bool
}

type service struct {
	ports     map[string]apipb.Protocol
	instances map[string]*instance
}

type catalog struct {
	services map[svcKey]*service
	nInst    int
}

func newCatalog() *catalog { return &catalog{services: make(map[svcKey]*service)} }

func (c *catalog) apply(ch *apipb.Change) {
	switch x := ch.Change.(type) {
	case *apipb.Change_Service:
		k := svcKey{x.Service.Peer, x.Service.Namespace, x.Service.Name}
		s := c.services[k]
		if s == nil {
			s = &service{instances: make(map[string]*instance)}
			c.services[k] = s
		}
		s.ports = make(map[string]apipb.Protocol, len(x.Service.Ports))
		for _, p := range x.Service.Ports {
			s.ports[p.Name] = p.Protocol
		}
	case *apipb.Change_ServiceDeleted:
		k := svcKey{x.ServiceDeleted.Peer, x.ServiceDeleted.Namespace, x.ServiceDeleted.Name}
		if s := c.services[k]; s != nil {
			c.nInst -= len(s.instances)
		}
		delete(c.services, k)
	case *apipb.Change_Instance:
		in := x.Instance
		s := c.services[svcKey{in.Peer, in.Namespace, in.Service}]
		if s == nil {
			return // the service event always comes first
		}
		addr, err := netip.ParseAddr(in.Address)
		if err != nil {
			return
		}
		if _, ok := s.instances[in.Id]; !ok {
			c.nInst++
		}
		s.instances[in.Id] = &instance{id: in.Id, addr: addr, ports: in.Ports, passing: in.Health == apipb.Health_HEALTH_PASSING}
	case *apipb.Change_InstanceDeleted:
		k := x.InstanceDeleted
		if s := c.services[svcKey{k.Peer, k.Namespace, k.Service}]; s != nil {
			if _, ok := s.instances[k.Id]; ok {
				c.nInst--
				delete(s.instances, k.Id)
			}
		}
	}
}

// view holds the current catalog and the one being rebuilt by a resync.
type view struct {
	mu      sync.RWMutex
	cur     *catalog
	pending *catalog
	synced  bool
	index   uint64
}

func newView() *view { return &view{cur: newCatalog()} }

// apply folds one watch event into the view.
func (v *view) apply(ev *apipb.WatchEvent) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if ev.Resync {
		v.pending = newCatalog()
	}
	target := v.cur
	if v.pending != nil {
		target = v.pending
	}
	for _, ch := range ev.Changes {
		target.apply(ch)
	}
	if ev.Synced && v.pending != nil {
		v.cur, v.pending = v.pending, nil
	}
	if ev.Synced {
		v.synced = true
	}
	v.index = ev.Index
}

// lookup runs f with the current catalog under the read lock.
func (v *view) lookup(f func(c *catalog)) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	f(v.cur)
}

func (v *view) sizes() (services, instances int) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.cur.services), v.cur.nInst
}

func (v *view) indexSnapshot() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.index
}
