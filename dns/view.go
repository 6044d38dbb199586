package dns

import (
	"net/netip"
	"slices"
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

func (k svcKey) String() string { return k.peer + "\x00" + k.ns + "\x00" + k.name }

// answers reports whether a service has addresses to give: a passing
// instance for a local one, a virtual IP and instances for an import.
func (sv *service) answers() bool {
	if sv.key.peer != "" {
		return sv.vip.IsValid() && len(sv.instances) > 0
	}
	for _, in := range sv.instances {
		if in.passing {
			return true
		}
	}
	return false
}

type instance struct {
	id      string
	addr    netip.Addr
	ports   map[string]uint32
	passing bool
}

type service struct {
	key       svcKey
	ports     map[string]apipb.Protocol
	instances map[string]*instance
	vip       netip.Addr // imported services only
}

type catalog struct {
	services map[svcKey]*service
	byName   map[string]*service // by "peer\x00ns\x00name", for lookups by bytes
	nInst    int
	byVIP    map[netip.Addr]*service
	// peers counts imported services per peer; order lists the peers in
	// failover preference (configured first, then by name), rebuilt when
	// the set of peers changes.
	peers map[string]int
	order []string
	pref  []string
}

func newCatalog(pref []string) *catalog {
	return &catalog{services: make(map[svcKey]*service), byName: make(map[string]*service), byVIP: make(map[netip.Addr]*service), peers: make(map[string]int), pref: pref}
}

// peerCount counts a peer's imported services up or down, and rebuilds
// the failover order when a peer appears or disappears.
func (c *catalog) peerCount(peer string, delta int) {
	before := c.peers[peer]
	c.peers[peer] += delta
	if c.peers[peer] <= 0 {
		delete(c.peers, peer)
	}
	if (before == 0) == (c.peers[peer] == 0) {
		return
	}
	c.order = c.order[:0]
	for _, p := range c.pref {
		if c.peers[p] > 0 {
			c.order = append(c.order, p)
		}
	}
	var rest []string
	for p := range c.peers {
		if !slices.Contains(c.pref, p) {
			rest = append(rest, p)
		}
	}
	slices.Sort(rest)
	c.order = append(c.order, rest...)
}

func (c *catalog) apply(ch *apipb.Change) {
	switch x := ch.Change.(type) {
	case *apipb.Change_Service:
		k := svcKey{x.Service.Peer, x.Service.Namespace, x.Service.Name}
		s := c.services[k]
		if s == nil {
			s = &service{key: k, instances: make(map[string]*instance)}
			c.services[k] = s
			c.byName[k.String()] = s
			if k.peer != "" {
				c.peerCount(k.peer, 1)
			}
		}
		s.ports = make(map[string]apipb.Protocol, len(x.Service.Ports))
		for _, p := range x.Service.Ports {
			s.ports[p.Name] = p.Protocol
		}
		if s.vip.IsValid() {
			delete(c.byVIP, s.vip)
		}
		s.vip, _ = netip.ParseAddr(x.Service.VirtualIp)
		if s.vip.IsValid() {
			c.byVIP[s.vip] = s
		}
	case *apipb.Change_ServiceDeleted:
		k := svcKey{x.ServiceDeleted.Peer, x.ServiceDeleted.Namespace, x.ServiceDeleted.Name}
		if s := c.services[k]; s != nil {
			c.nInst -= len(s.instances)
			if s.vip.IsValid() {
				delete(c.byVIP, s.vip)
			}
			if k.peer != "" {
				c.peerCount(k.peer, -1)
			}
		}
		delete(c.services, k)
		delete(c.byName, k.String())
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
	pref    []string // peers in failover order
}

func newView(pref []string) *view { return &view{cur: newCatalog(pref), pref: pref} }

// apply folds one watch event into the view.
func (v *view) apply(ev *apipb.WatchEvent) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if ev.Resync {
		v.pending = newCatalog(v.pref)
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
