package state

import (
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// ServiceKey identifies a service: a local one when Peer is empty, else
// one imported from that peer. It is an alias of an unnamed struct so that
// a package that must not import this one (federation/replication) can
// declare the same type, and take the store as an interface of its own.
type ServiceKey = struct{ Peer, Namespace, Name string }

// KeyOf returns the key of a service.
func KeyOf(svc *apipb.Service) ServiceKey { return ServiceKey{svc.Peer, svc.Namespace, svc.Name} }

// KeyOfInstance returns the key of an instance's service.
func KeyOfInstance(in *apipb.Instance) ServiceKey {
	return ServiceKey{in.Peer, in.Namespace, in.Service}
}

// Store holds the state in memory.
type Store struct {
	mu    sync.RWMutex
	index uint64
	// halted is set when a command could not be applied because its
	// format is too new (ErrFormat): nothing is applied after it, until a
	// restore.
	halted error
	site   *statepb.Bootstrap
	catalog
	tokens     map[string]*TokenRecord         // by accessor ID
	byHash     map[[32]byte]string             // secret hash -> accessor ID
	entries    map[string]*apipb.WorkloadEntry // by ID
	foreign    bundles                         // by trust domain
	exports    map[ServiceKey]*apipb.Export
	agents     map[string]*apipb.Agent         // by node
	imports    map[string]*statepb.PeerImport  // by peer name
	vip        vipAllocator                    // virtual IPs of imported services
	quota      quotas                          // what each peer's imports hold
	intentions map[string]*apipb.Intention     // by source and destination
	gateways   map[string]*apipb.GatewayRecord // by name
	meshCh     chan struct{}                   // closed (and replaced) on intention and gateway changes
	events     *publisher
	// identityCh is closed (and replaced) whenever workload entries or the
	// site's CA change; agents' watches wait on it.
	identityCh chan struct{}
	// exportsCh is closed (and replaced) whenever exports change.
	exportsCh chan struct{}
}

// catalog is the services and their instances, local and imported.
type catalog struct {
	services  map[ServiceKey]*apipb.Service
	instances map[ServiceKey]map[string]*apipb.Instance
	nInst     int
}

// NewStore returns an empty store whose watch buffer keeps the last
// retain changes for resumption (4096 when zero).
func NewStore(retain int) *Store {
	if retain <= 0 {
		retain = 4096
	}
	s := &Store{}
	s.reset()
	s.events = newPublisher(retain, 0)
	return s
}

func (s *Store) reset() {
	s.site = nil
	s.catalog = catalog{
		services:  make(map[ServiceKey]*apipb.Service),
		instances: make(map[ServiceKey]map[string]*apipb.Instance),
	}
	s.tokens = make(map[string]*TokenRecord)
	s.byHash = make(map[[32]byte]string)
	s.entries = make(map[string]*apipb.WorkloadEntry)
	s.foreign = make(map[string]*statepb.ForeignBundle)
	s.exports = make(map[ServiceKey]*apipb.Export)
	s.agents = make(map[string]*apipb.Agent)
	s.imports = make(map[string]*statepb.PeerImport)
	s.vip = vipAllocator{byAddr: make(map[netip.Addr]ServiceKey)}
	s.quota = quotas{use: make(map[string]*ImportUsage)}
	s.intentions = make(map[string]*apipb.Intention)
	s.gateways = make(map[string]*apipb.GatewayRecord)
	s.meshCh = make(chan struct{})
	s.identityCh = make(chan struct{})
	s.exportsCh = make(chan struct{})
}

// wake closes a change channel and replaces it, waking its watchers.
// Write lock held.
func wake(ch *chan struct{}) {
	close(*ch)
	*ch = make(chan struct{})
}

// Halted returns why the store stopped applying the log (ErrFormat), or
// nil. A halted store keeps serving the state as of Index, refuses every
// later command and every snapshot, so that it never records a state that
// skipped a command; a restore (or a restart of an upgraded server, which
// restores the last snapshot and replays the log) clears it.
func (s *Store) Halted() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.halted
}

// Index is the Raft index of the last applied command.
func (s *Store) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// Site returns the site's identity, or nil before bootstrap.
func (s *Store) Site() *statepb.Bootstrap {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.site
}

// Counts returns the number of services and instances.
func (s *Store) Counts() (services, instances int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.services), s.nInst
}

// ServiceSummaries lists services, in one namespace or all, sorted.
func (s *Store) ServiceSummaries(namespace string) ([]*apipb.ServiceSummary, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*apipb.ServiceSummary
	for k, svc := range s.services {
		if namespace != "" && k.Namespace != namespace {
			continue
		}
		sum := &apipb.ServiceSummary{Service: svc}
		for _, in := range s.instances[k] {
			sum.Instances++
			if in.Health == apipb.Health_HEALTH_PASSING {
				sum.Passing++
			}
		}
		out = append(out, sum)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Service, out[j].Service
		if a.Peer != b.Peer {
			return a.Peer < b.Peer
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	return out, s.index
}

// Service returns a service and its instances sorted by ID.
func (s *Store) Service(k ServiceKey, passingOnly bool) (*apipb.Service, []*apipb.Instance, uint64, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	svc, ok := s.services[k]
	if !ok {
		return nil, nil, s.index, false
	}
	insts := make([]*apipb.Instance, 0, len(s.instances[k]))
	for _, in := range s.instances[k] {
		if passingOnly && in.Health != apipb.Health_HEALTH_PASSING {
			continue
		}
		insts = append(insts, in)
	}
	sort.Slice(insts, func(i, j int) bool { return insts[i].Id < insts[j].Id })
	return svc, insts, s.index, true
}

// Instance returns one instance.
func (s *Store) Instance(k *apipb.InstanceKey) (*apipb.Instance, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	in, ok := s.instances[ServiceKey{k.Peer, k.Namespace, k.Service}][k.Id]
	return in, ok
}

// EachTTLInstance calls f for every instance with a TTL, under the read lock.
func (s *Store) EachTTLInstance(f func(*apipb.Instance)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for k, byID := range s.instances {
		if k.Peer != "" {
			continue
		}
		for _, in := range byID {
			if in.Ttl != nil {
				f(in)
			}
		}
	}
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
