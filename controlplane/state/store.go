package state

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// ServiceKey identifies a service: a local one when Peer is empty, else
// one imported from that peer.
type ServiceKey struct{ Peer, Namespace, Name string }

// KeyOf returns the key of a service.
func KeyOf(svc *apipb.Service) ServiceKey { return ServiceKey{svc.Peer, svc.Namespace, svc.Name} }

// KeyOfInstance returns the key of an instance's service.
func KeyOfInstance(in *apipb.Instance) ServiceKey {
	return ServiceKey{in.Peer, in.Namespace, in.Service}
}

// Store holds the state in memory.
type Store struct {
	mu         sync.RWMutex
	index      uint64
	site       *statepb.Bootstrap
	services   map[ServiceKey]*apipb.Service
	instances  map[ServiceKey]map[string]*apipb.Instance
	nInst      int
	tokens     map[string]*statepb.TokenRecord   // by accessor ID
	byHash     map[[32]byte]string               // secret hash -> accessor ID
	entries    map[string]*apipb.WorkloadEntry   // by ID
	foreign    map[string]*statepb.ForeignBundle // by trust domain
	exports    map[ServiceKey]*apipb.Export
	agents     map[string]*apipb.Agent         // by node
	imports    map[string]*statepb.PeerImport  // by peer name
	vips       map[netip.Addr]ServiceKey       // virtual IPs of imported services
	vipLast    netip.Addr                      // the last virtual IP allocated
	vipIdx     [2]*vipIndex                    // used addresses of the last two ranges allocated from; built on demand
	use        map[string]*ImportUsage         // what each peer's imports hold, by peer name
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
	s.services = make(map[ServiceKey]*apipb.Service)
	s.instances = make(map[ServiceKey]map[string]*apipb.Instance)
	s.nInst = 0
	s.tokens = make(map[string]*statepb.TokenRecord)
	s.byHash = make(map[[32]byte]string)
	s.entries = make(map[string]*apipb.WorkloadEntry)
	s.foreign = make(map[string]*statepb.ForeignBundle)
	s.exports = make(map[ServiceKey]*apipb.Export)
	s.agents = make(map[string]*apipb.Agent)
	s.imports = make(map[string]*statepb.PeerImport)
	s.vips = make(map[netip.Addr]ServiceKey)
	s.vipLast = netip.Addr{}
	s.vipIdx = [2]*vipIndex{}
	s.use = make(map[string]*ImportUsage)
	s.intentions = make(map[string]*apipb.Intention)
	s.gateways = make(map[string]*apipb.GatewayRecord)
	s.meshCh = make(chan struct{})
	s.identityCh = make(chan struct{})
	s.exportsCh = make(chan struct{})
}

// identityChanged wakes identity watchers. Write lock held.
func (s *Store) identityChanged() {
	close(s.identityCh)
	s.identityCh = make(chan struct{})
}

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

// HashSecret is how token secrets are stored: SHA-256. Secrets are 256
// random bits, so a slow password hash would add nothing.
func HashSecret(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// TokenBySecret resolves a secret to its token, if it exists.
func (s *Store) TokenBySecret(hash [32]byte) (*statepb.TokenRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	acc, ok := s.byHash[hash]
	if !ok {
		return nil, false
	}
	return s.tokens[acc], true
}

// Tokens lists tokens sorted by creation time.
func (s *Store) Tokens() []*apipb.Token {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*apipb.Token, 0, len(s.tokens))
	for _, t := range s.tokens {
		out = append(out, t.Token)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].CreateTime.AsTime(), out[j].CreateTime.AsTime()
		if !a.Equal(b) {
			return a.Before(b)
		}
		return out[i].AccessorId < out[j].AccessorId
	})
	return out
}

// ApplyCommand applies one command at index. On error the state is
// unchanged. The result is the command's output (see each case).
func (s *Store) ApplyCommand(index uint64, cmd *statepb.Command) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyLocked(index, cmd)
}

func (s *Store) applyLocked(index uint64, cmd *statepb.Command) (any, error) {
	if index > s.index {
		s.index = index
	}
	if err := wellFormed(cmd); err != nil {
		return nil, err
	}
	now := cmd.GetTime().AsTime()
	var ch changes
	var out any
	var err error
	switch c := cmd.Cmd.(type) {
	case *statepb.Command_Bootstrap:
		err = s.applyBootstrap(index, c.Bootstrap, cmd.GetTime())
	case *statepb.Command_Register:
		err = s.applyRegister(index, c.Register, &ch)
	case *statepb.Command_Deregister:
		err = s.applyDeregister(c.Deregister, &ch)
	case *statepb.Command_SetHealth:
		s.applySetHealth(index, c.SetHealth, &ch)
	case *statepb.Command_CreateToken:
		err = s.applyCreateToken(c.CreateToken)
	case *statepb.Command_RevokeToken:
		err = s.applyRevokeToken(c.RevokeToken)
	case *statepb.Command_ConsumeToken:
		out, err = s.applyConsumeToken(c.ConsumeToken, now)
	case *statepb.Command_CreateEntry:
		err = s.applyCreateEntry(index, c.CreateEntry)
	case *statepb.Command_DeleteEntry:
		err = s.applyDeleteEntry(c.DeleteEntry)
	case *statepb.Command_AddJwtKey:
		err = s.applyAddJWTKey(index, c.AddJwtKey)
	case *statepb.Command_SetExport:
		s.applySetExport(c.SetExport)
	case *statepb.Command_ImportBatch:
		err = s.applyImport(index, c.ImportBatch, now, &ch)
	case *statepb.Command_SetIntention:
		s.applySetIntention(index, c.SetIntention)
	case *statepb.Command_DeleteIntention:
		err = s.applyDeleteIntention(c.DeleteIntention)
	case *statepb.Command_SetGateway:
		s.applySetGateway(c.SetGateway)
	case *statepb.Command_SetAgent:
		s.agents[c.SetAgent.Node] = proto.Clone(c.SetAgent).(*apipb.Agent)
		if c.SetAgent.Revoked {
			s.identityChanged() // the agent's watch ends at once
		}
	case *statepb.Command_SetForeignBundle:
		err = s.applySetForeign(c.SetForeignBundle)
	case *statepb.Command_AddPeer:
		err = s.applyAddPeer(c.AddPeer, now)
	case *statepb.Command_DeleteForeignBundle:
		err = s.applyDeleteForeign(index, c.DeleteForeignBundle, &ch)
	case *statepb.Command_PrepareRoot:
		err = s.applyPrepareRoot(index, c.PrepareRoot, now)
	case *statepb.Command_ActivateRoot:
		err = s.applyActivateRoot(index, c.ActivateRoot, now)
	case *statepb.Command_DropRoot:
		err = s.applyDropRoot(index, c.DropRoot)
	default:
		err = fmt.Errorf("unknown command %T", cmd.Cmd)
	}
	if len(ch) > 0 {
		s.events.publish(&apipb.WatchEvent{Index: index, Changes: ch})
	}
	return out, err
}

// wellFormed checks the structure apply relies on; it never looks at the
// state, so every replica reaches the same verdict.
func wellFormed(cmd *statepb.Command) error {
	bad := func(what string) error { return fmt.Errorf("%s: %w", what, ErrMalformed) }
	switch c := cmd.Cmd.(type) {
	case *statepb.Command_Bootstrap:
		if c.Bootstrap.GetRoot() == nil || c.Bootstrap.Site == "" || c.Bootstrap.TrustDomain == "" {
			return bad("bootstrap without site, trust domain or root")
		}
		if mt := c.Bootstrap.ManagementToken; mt != nil && (mt.Token.GetAccessorId() == "" || len(mt.SecretHash) != 32) {
			return bad("bootstrap with a malformed management token")
		}
	case *statepb.Command_Register:
		r := c.Register
		if r.GetService().GetName() == "" || r.Service.Namespace == "" {
			return bad("register without a service name and namespace")
		}
		if r.Instance != nil && r.Instance.Id == "" {
			return bad("register with an instance without an id")
		}
		if r.Service.Peer != "" || r.Instance.GetPeer() != "" {
			return bad("register of an imported service (only replication writes those)")
		}
	case *statepb.Command_Deregister:
		if c.Deregister.GetService() == "" {
			return bad("deregister without a service")
		}
	case *statepb.Command_SetHealth:
		for _, k := range c.SetHealth.GetInstances() {
			if k == nil || k.Peer != "" {
				return bad("set health with an empty key or an imported instance")
			}
		}
	case *statepb.Command_CreateToken:
		if c.CreateToken.GetToken().GetAccessorId() == "" || len(c.CreateToken.SecretHash) != 32 {
			return bad("token without accessor or 32-byte hash")
		}
	case *statepb.Command_CreateEntry:
		e := c.CreateEntry
		if e.Id == "" || e.Namespace == "" || e.Service == "" || e.Agent == "" || len(e.Selectors) == 0 {
			return bad("workload entry without id, namespace, service, agent or selectors")
		}
		for _, sel := range e.Selectors {
			if sel == nil {
				return bad("workload entry with an empty selector")
			}
		}
	case *statepb.Command_AddJwtKey:
		k := c.AddJwtKey
		if k.Kid == "" || len(k.PublicKey) == 0 || len(k.SealedKey) == 0 {
			return bad("jwt key without kid, public key or sealed key")
		}
	case *statepb.Command_SetAgent:
		if c.SetAgent.Node == "" {
			return bad("agent without a node name")
		}
	case *statepb.Command_SetExport:
		if c.SetExport.Namespace == "" || c.SetExport.Service == "" {
			return bad("export without namespace or service")
		}
	case *statepb.Command_SetForeignBundle:
		if c.SetForeignBundle.TrustDomain == "" || len(c.SetForeignBundle.Bundle) == 0 {
			return bad("foreign bundle without trust domain or bundle")
		}
	case *statepb.Command_DeleteForeignBundle:
		if c.DeleteForeignBundle.TrustDomain == "" {
			return bad("delete foreign bundle without trust domain")
		}
	case *statepb.Command_AddPeer:
		p := c.AddPeer.GetPeer()
		if p.GetTrustDomain() == "" || len(p.Bundle) == 0 || p.PeerName == "" {
			return bad("add peer without trust domain, bundle or peer name")
		}
		if h := c.AddPeer.InviteSecretHash; len(h) != 0 && len(h) != 32 {
			return bad("add peer with a malformed invite hash")
		}
	case *statepb.Command_ImportBatch:
		return wellFormedImport(c.ImportBatch)
	case *statepb.Command_SetIntention:
		in := c.SetIntention
		if in.Source == "" || in.Destination == "" || in.Action == apipb.IntentionAction_INTENTION_ACTION_UNSPECIFIED {
			return bad("intention without source, destination or action")
		}
	case *statepb.Command_DeleteIntention:
		if c.DeleteIntention.Source == "" || c.DeleteIntention.Destination == "" {
			return bad("delete intention without source or destination")
		}
	case *statepb.Command_SetGateway:
		if c.SetGateway.Name == "" {
			return bad("gateway without a name")
		}
	case *statepb.Command_PrepareRoot:
		if len(c.PrepareRoot.Certificate) == 0 || len(c.PrepareRoot.SealedKey) == 0 {
			return bad("prepare root without certificate or key")
		}
	case *statepb.Command_ActivateRoot:
		if len(c.ActivateRoot.Certificate) == 0 || c.ActivateRoot.DropAfter == nil {
			return bad("activate root without certificate or drop time")
		}
	case *statepb.Command_DropRoot:
		if len(c.DropRoot.Certificate) == 0 {
			return bad("drop root without certificate")
		}
	case *statepb.Command_RevokeToken, *statepb.Command_ConsumeToken, *statepb.Command_DeleteEntry:
	case nil:
		return bad("empty command")
	}
	return nil
}

type changes []*apipb.Change

func (c *changes) service(v *apipb.Service) {
	*c = append(*c, &apipb.Change{Change: &apipb.Change_Service{Service: v}})
}
func (c *changes) instance(v *apipb.Instance) {
	*c = append(*c, &apipb.Change{Change: &apipb.Change_Instance{Instance: v}})
}
func (c *changes) serviceDeleted(k ServiceKey) {
	*c = append(*c, &apipb.Change{Change: &apipb.Change_ServiceDeleted{ServiceDeleted: &apipb.ServiceKey{Namespace: k.Namespace, Name: k.Name, Peer: k.Peer}}})
}
func (c *changes) instanceDeleted(in *apipb.Instance) {
	*c = append(*c, &apipb.Change{Change: &apipb.Change_InstanceDeleted{InstanceDeleted: &apipb.InstanceKey{Namespace: in.Namespace, Service: in.Service, Id: in.Id, Peer: in.Peer}}})
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

func (s *Store) applyCreateEntry(index uint64, e *apipb.WorkloadEntry) error {
	if _, ok := s.entries[e.Id]; ok {
		return fmt.Errorf("workload entry %s exists: %w", e.Id, ErrConflict)
	}
	for _, o := range s.entries {
		if sameEntry(o, e) {
			return fmt.Errorf("an identical workload entry exists (%s): %w", o.Id, ErrConflict)
		}
	}
	n := proto.Clone(e).(*apipb.WorkloadEntry)
	n.CreateIndex = index
	s.entries[n.Id] = n
	s.identityChanged()
	return nil
}

func (s *Store) applyAddJWTKey(index uint64, k *statepb.JWTKey) error {
	return s.editSite(index, func(site *statepb.Bootstrap) error {
		for _, o := range site.JwtKeys {
			if o.Kid == k.Kid {
				return fmt.Errorf("jwt key %s exists: %w", k.Kid, ErrConflict)
			}
		}
		site.JwtKeys = append(site.JwtKeys, proto.Clone(k).(*statepb.JWTKey))
		return nil
	})
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

func (s *Store) applySetExport(e *apipb.Export) {
	k := ServiceKey{"", e.Namespace, e.Service}
	if len(e.To) == 0 {
		delete(s.exports, k)
	} else {
		s.exports[k] = proto.Clone(e).(*apipb.Export)
	}
	close(s.exportsCh)
	s.exportsCh = make(chan struct{})
}

// dropExportsTo removes a removed peer from every export, so that a later
// peering under the same name does not inherit them. Lock held.
func (s *Store) dropExportsTo(peer string) {
	changed := false
	for k, e := range s.exports {
		if !slices.Contains(e.To, peer) {
			continue
		}
		n := proto.Clone(e).(*apipb.Export)
		n.To = slices.DeleteFunc(n.To, func(to string) bool { return to == peer })
		if len(n.To) == 0 {
			delete(s.exports, k)
		} else {
			s.exports[k] = n
		}
		changed = true
	}
	if changed {
		close(s.exportsCh)
		s.exportsCh = make(chan struct{})
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

// ForeignBundle returns one foreign bundle.
func (s *Store) ForeignBundle(td string) (*statepb.ForeignBundle, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f, ok := s.foreign[td]
	return f, ok
}

// applySetForeign upserts a foreign bundle. A bundle never goes back to a
// lower sequence; status-only updates (same bundle) do not wake watchers.
// It never turns a peering into a plain foreign bundle or back, nor
// renames a peer (peerings come and go with AddPeer and
// DeleteForeignBundle), and a peer name stays unique.
func (s *Store) applySetForeign(f *statepb.ForeignBundle) error {
	if s.site != nil && f.TrustDomain == s.site.TrustDomain {
		return fmt.Errorf("%s is this site's own trust domain: %w", f.TrustDomain, ErrConflict)
	}
	old, ok := s.foreign[f.TrustDomain]
	if ok && old.PeerName != f.PeerName {
		if old.PeerName != "" {
			return fmt.Errorf("%s is the trust domain of peer %q: end the peering with `strait federation delete %s`: %w", f.TrustDomain, old.PeerName, old.PeerName, ErrConflict)
		}
		return fmt.Errorf("%s is a foreign bundle, not a peering; remove it first: %w", f.TrustDomain, ErrConflict)
	}
	if !ok && f.PeerName != "" {
		if err := s.checkPeerFree(f); err != nil {
			return err
		}
	}
	if ok && f.Sequence < old.Sequence && !bytes.Equal(f.Bundle, old.Bundle) {
		return fmt.Errorf("bundle of %s: sequence %d is older than %d: %w", f.TrustDomain, f.Sequence, old.Sequence, ErrConflict)
	}
	s.foreign[f.TrustDomain] = proto.Clone(f).(*statepb.ForeignBundle)
	if !ok || !bytes.Equal(f.Bundle, old.Bundle) {
		s.identityChanged()
	}
	return nil
}

// checkPeerFree refuses a new peering whose name or trust domain is taken,
// or whose name is this site's. Lock held.
func (s *Store) checkPeerFree(f *statepb.ForeignBundle) error {
	if s.site != nil {
		if f.TrustDomain == s.site.TrustDomain {
			return fmt.Errorf("%s is this site's own trust domain: %w", f.TrustDomain, ErrConflict)
		}
		if f.PeerName == s.site.Site {
			return fmt.Errorf("a peer cannot be named %q, this site's own name: %w", f.PeerName, ErrConflict)
		}
	}
	for _, o := range s.foreign {
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

// applyAddPeer creates a peering, consuming the invite when one is named
// (see AddPeer): everything or nothing.
func (s *Store) applyAddPeer(a *statepb.AddPeer, now time.Time) error {
	f := a.Peer
	if err := s.checkPeerFree(f); err != nil {
		return err
	}
	var acc string
	if len(a.InviteSecretHash) > 0 {
		var h [32]byte
		copy(h[:], a.InviteSecretHash)
		var ok bool
		if acc, ok = s.byHash[h]; !ok {
			return fmt.Errorf("unknown or revoked: %w", ErrTokenInvalid)
		}
		t := s.tokens[acc]
		if t.Token.Kind != apipb.TokenKind_TOKEN_KIND_FEDERATION {
			return fmt.Errorf("not a federation token: %w", ErrTokenInvalid)
		}
		if err := Usable(t.Token, now); err != nil {
			return err
		}
		if t.PeerName != "" && t.PeerName != f.PeerName {
			return fmt.Errorf("the invitation was issued for peer %q, not %q: %w", t.PeerName, f.PeerName, ErrConflict)
		}
		n := proto.Clone(t).(*statepb.TokenRecord)
		n.Token.Uses++
		s.tokens[acc] = n
	}
	s.foreign[f.TrustDomain] = proto.Clone(f).(*statepb.ForeignBundle)
	s.identityChanged()
	return nil
}

// applyDeleteForeign removes a foreign bundle; for a peer, also everything
// imported from it.
func (s *Store) applyDeleteForeign(index uint64, d *statepb.DeleteForeignBundle, ch *changes) error {
	f, ok := s.foreign[d.TrustDomain]
	if !ok {
		return fmt.Errorf("foreign bundle %s: %w", d.TrustDomain, ErrNotFound)
	}
	if f.PeerName != "" {
		s.dropImports(f.PeerName, nil, ch)
		delete(s.imports, f.PeerName)
		s.dropExportsTo(f.PeerName)
		s.dropIntentionsFrom(f.PeerName)
	}
	delete(s.foreign, d.TrustDomain)
	s.identityChanged()
	return nil
}

// editSite applies f to a copy of the site, then publishes it as a bundle
// change at index.
func (s *Store) editSite(index uint64, f func(site *statepb.Bootstrap) error) error {
	if s.site == nil {
		return ErrNotBootstrapped
	}
	site := proto.Clone(s.site).(*statepb.Bootstrap)
	if err := f(site); err != nil {
		return err
	}
	site.BundleSequence = index
	s.site = site
	s.identityChanged()
	return nil
}

func (s *Store) applyPrepareRoot(index uint64, r *statepb.CARoot, now time.Time) error {
	return s.editSite(index, func(site *statepb.Bootstrap) error {
		for _, o := range site.Roots {
			if o.Phase == statepb.RootPhase_ROOT_PHASE_PREPARED {
				return fmt.Errorf("a root is already prepared; it activates after the propagation delay: %w", ErrConflict)
			}
		}
		n := proto.Clone(r).(*statepb.CARoot)
		n.Phase, n.Since = statepb.RootPhase_ROOT_PHASE_PREPARED, timestamppb.New(now)
		site.Roots = append(site.Roots, n)
		return nil
	})
}

func (s *Store) applyActivateRoot(index uint64, a *statepb.ActivateRoot, now time.Time) error {
	return s.editSite(index, func(site *statepb.Bootstrap) error {
		for i, o := range site.Roots {
			if o.Phase != statepb.RootPhase_ROOT_PHASE_PREPARED || !bytes.Equal(o.Certificate, a.Certificate) {
				continue
			}
			old := site.Root
			old.Phase, old.Since, old.DropAfter = statepb.RootPhase_ROOT_PHASE_RETIRED, timestamppb.New(now), a.DropAfter
			site.Root = o
			site.Root.Phase, site.Root.Since, site.Root.DropAfter = statepb.RootPhase_ROOT_PHASE_UNSPECIFIED, timestamppb.New(now), nil
			site.Roots[i] = old
			return nil
		}
		return fmt.Errorf("activate root: no such prepared root: %w", ErrNotFound)
	})
}

func (s *Store) applyDropRoot(index uint64, d *statepb.DropRoot) error {
	return s.editSite(index, func(site *statepb.Bootstrap) error {
		for i, o := range site.Roots {
			if o.Phase == statepb.RootPhase_ROOT_PHASE_RETIRED && bytes.Equal(o.Certificate, d.Certificate) {
				site.Roots = append(site.Roots[:i], site.Roots[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("drop root: no such retired root: %w", ErrNotFound)
	})
}

func (s *Store) applyDeleteEntry(d *statepb.DeleteEntry) error {
	if _, ok := s.entries[d.Id]; !ok {
		return fmt.Errorf("workload entry %s: %w", d.Id, ErrNotFound)
	}
	delete(s.entries, d.Id)
	s.identityChanged()
	return nil
}

func (s *Store) applyBootstrap(index uint64, b *statepb.Bootstrap, at *timestamppb.Timestamp) error {
	if s.site != nil {
		return fmt.Errorf("bootstrap: site %q is already bootstrapped: %w", s.site.Site, ErrConflict)
	}
	site := proto.Clone(b).(*statepb.Bootstrap)
	site.BundleSequence = index
	if site.Root != nil && site.Root.Since == nil && at != nil {
		// The first root is active from the site's creation: the command's
		// time, the same on every server.
		site.Root.Since = timestamppb.New(at.AsTime())
	}
	mt := site.ManagementToken
	site.ManagementToken = nil
	s.site = site
	if mt != nil {
		s.putToken(mt)
	}
	return nil
}

func (s *Store) applyRegister(index uint64, req *apipb.RegisterRequest, ch *changes) error {
	k := ServiceKey{"", req.Service.GetNamespace(), req.Service.GetName()}
	if err := s.checkPortsInUse(k, req); err != nil {
		return err
	}
	s.putService(index, k, proto.Clone(req.Service).(*apipb.Service), ch)
	if req.Instance == nil {
		return nil
	}
	in := proto.Clone(req.Instance).(*apipb.Instance)
	in.Namespace, in.Service = k.Namespace, k.Name
	if in.Health == apipb.Health_HEALTH_UNSPECIFIED {
		in.Health = apipb.Health_HEALTH_PASSING
	}
	s.putInstance(index, s.instances[k], in, ch)
	return nil
}

// putInstance stores a new version of an instance (a copy the caller owns)
// unless nothing changed. Lock held.
func (s *Store) putInstance(index uint64, byID map[string]*apipb.Instance, in *apipb.Instance, ch *changes) {
	if prev, ok := byID[in.Id]; ok {
		in.CreateIndex, in.ModifyIndex = prev.CreateIndex, prev.ModifyIndex
		if proto.Equal(prev, in) {
			return
		}
	} else {
		in.CreateIndex = index
		s.nInst++
	}
	in.ModifyIndex = index
	byID[in.Id] = in
	ch.instance(in)
}

// putService stores a new version of a service definition (a copy the
// caller owns) unless nothing changed. Lock held.
func (s *Store) putService(index uint64, k ServiceKey, svc *apipb.Service, ch *changes) {
	if old, ok := s.services[k]; ok {
		svc.CreateIndex, svc.ModifyIndex = old.CreateIndex, old.ModifyIndex
		if proto.Equal(old, svc) {
			return
		}
		svc.ModifyIndex = index
	} else {
		svc.CreateIndex, svc.ModifyIndex = index, index
		s.instances[k] = make(map[string]*apipb.Instance)
	}
	s.services[k] = svc
	ch.service(svc)
}

// checkPortsInUse rejects a service definition that drops a port its
// instances (other than the one being replaced) still use, and an instance
// naming a port the service does not define. Instances are scanned only
// when the definition drops a port, so registering into a large service
// stays O(1).
func (s *Store) checkPortsInUse(k ServiceKey, req *apipb.RegisterRequest) error {
	defined := make(map[string]bool, len(req.Service.GetPorts()))
	for _, p := range req.Service.GetPorts() {
		defined[p.Name] = true
	}
	for name := range req.Instance.GetPorts() {
		if !defined[name] {
			return fmt.Errorf("instance.ports: port %q is not defined by service %s/%s: %w", name, k.Namespace, k.Name, ErrConflict)
		}
	}
	old := s.services[k]
	dropped := false
	for _, p := range old.GetPorts() {
		if !defined[p.Name] {
			dropped = true
			break
		}
	}
	if !dropped {
		return nil
	}
	for id, in := range s.instances[k] {
		if req.Instance != nil && id == req.Instance.Id {
			continue
		}
		for name := range in.Ports {
			if !defined[name] {
				return fmt.Errorf("service.ports: port %q is used by instance %s; deregister it or keep the port: %w", name, id, ErrConflict)
			}
		}
	}
	return nil
}

func (s *Store) applyDeregister(req *apipb.DeregisterRequest, ch *changes) error {
	k := ServiceKey{"", req.Namespace, req.Service}
	byID, ok := s.instances[k]
	if !ok {
		return fmt.Errorf("service %s/%s: %w", k.Namespace, k.Name, ErrNotFound)
	}
	if req.InstanceId != "" {
		in, ok := byID[req.InstanceId]
		if !ok {
			return fmt.Errorf("instance %s of %s/%s: %w", req.InstanceId, k.Namespace, k.Name, ErrNotFound)
		}
		delete(byID, req.InstanceId)
		s.nInst--
		ch.instanceDeleted(in)
		return nil
	}
	s.deleteService(k, ch)
	return nil
}

func (s *Store) applySetHealth(index uint64, req *statepb.SetHealth, ch *changes) {
	for _, k := range req.Instances {
		byID := s.instances[ServiceKey{"", k.Namespace, k.Service}]
		in, ok := byID[k.Id]
		if !ok || in.Health == req.Health {
			continue // deregistered or already there since the proposal
		}
		in = proto.Clone(in).(*apipb.Instance)
		in.Health = req.Health
		in.ModifyIndex = index
		byID[k.Id] = in
		ch.instance(in)
	}
}

func (s *Store) putToken(t *statepb.TokenRecord) {
	var h [32]byte
	copy(h[:], t.SecretHash)
	s.tokens[t.Token.AccessorId] = t
	s.byHash[h] = t.Token.AccessorId
}

func (s *Store) applyCreateToken(t *statepb.TokenRecord) error {
	if _, ok := s.tokens[t.Token.AccessorId]; ok {
		return fmt.Errorf("create token: accessor %s exists: %w", t.Token.AccessorId, ErrConflict)
	}
	s.putToken(proto.Clone(t).(*statepb.TokenRecord))
	return nil
}

func (s *Store) applyRevokeToken(req *statepb.RevokeToken) error {
	t, ok := s.tokens[req.AccessorId]
	if !ok {
		return fmt.Errorf("token %s: %w", req.AccessorId, ErrNotFound)
	}
	var h [32]byte
	copy(h[:], t.SecretHash)
	delete(s.byHash, h)
	delete(s.tokens, req.AccessorId)
	return nil
}

// applyConsumeToken returns the token as it was before this use.
func (s *Store) applyConsumeToken(req *statepb.ConsumeToken, now time.Time) (*apipb.Token, error) {
	var h [32]byte
	copy(h[:], req.SecretHash)
	acc, ok := s.byHash[h]
	if !ok {
		return nil, fmt.Errorf("unknown or revoked: %w", ErrTokenInvalid)
	}
	t := s.tokens[acc]
	if err := Usable(t.Token, now); err != nil {
		return nil, err
	}
	n := proto.Clone(t).(*statepb.TokenRecord)
	n.Token.Uses++
	s.tokens[acc] = n
	return t.Token, nil
}

// Usable reports why a token cannot be used at now, or nil.
func Usable(t *apipb.Token, now time.Time) error {
	if t.ExpireTime != nil && !now.Before(t.ExpireTime.AsTime()) {
		return fmt.Errorf("expired at %s: %w", t.ExpireTime.AsTime().Format(time.RFC3339), ErrTokenInvalid)
	}
	if t.MaxUses > 0 && t.Uses >= t.MaxUses {
		return fmt.Errorf("already used: %w", ErrTokenInvalid)
	}
	return nil
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
