package state

import (
	"errors"
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// Import quotas: each ImportBatch carries the proposing leader's per-peer
// limits (statepb.ImportLimits), and apply refuses, whole, a batch that
// would take the peer's imports over one of them. The store keeps what
// each peer's imports hold (ImportUsage) up to date as records come and
// go, so the check costs the size of the batch, not of the catalog. The
// importer checks the same limits before proposing (CheckImport), so a
// refusal normally never reaches the log; this is the line that holds
// when it does.

// ErrQuota is what a refused import batch's error wraps (see QuotaError).
var ErrQuota = errors.New("import quota exceeded")

// The quotas, as QuotaError.Quota names them.
const (
	QuotaServices  = "services"
	QuotaInstances = "instances"
	QuotaBytes     = "bytes"
)

// QuotaError says which quota an import batch would exceed.
type QuotaError struct {
	Peer  string
	Quota string // QuotaServices, QuotaInstances or QuotaBytes
	Limit uint64
	Would uint64 // what the peer's imports would hold with the batch
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("imports from peer %q would hold %d %s, over the quota of %d", e.Peer, e.Would, e.Quota, e.Limit)
}

// ExceededQuota names the quota (QuotaServices, QuotaInstances or
// QuotaBytes), for callers that test for the method rather than the type.
func (e *QuotaError) ExceededQuota() string { return e.Quota }

// Is makes errors.Is(err, ErrQuota) true.
func (e *QuotaError) Is(target error) bool { return target == ErrQuota }

// ImportUsage is what one peer's imports hold.
type ImportUsage struct {
	Services, Instances int
	// Bytes of the records as the peer sent them (see ImportedSize).
	Bytes int64
	// VIPs is how many virtual IPs the peer's services hold; WithoutVIP
	// how many of its services have none (the range, or the peer's share
	// of it, was used up when they were imported).
	VIPs, WithoutVIP int
}

// Fields this site sets on imported records, whatever the peer sent: they
// do not count towards the bytes quota. Their numbers are read from the
// descriptors once.
var (
	svcPeer    = fieldNum(&apipb.Service{}, "peer")
	svcVIP     = fieldNum(&apipb.Service{}, "virtual_ip")
	svcCreate  = fieldNum(&apipb.Service{}, "create_index")
	svcModify  = fieldNum(&apipb.Service{}, "modify_index")
	instPeer   = fieldNum(&apipb.Instance{}, "peer")
	instHealth = fieldNum(&apipb.Instance{}, "health")
	instTTL    = fieldNum(&apipb.Instance{}, "ttl")
	instCreate = fieldNum(&apipb.Instance{}, "create_index")
	instModify = fieldNum(&apipb.Instance{}, "modify_index")
)

func fieldNum(m proto.Message, name protoreflect.Name) protoreflect.FieldNumber {
	fd := m.ProtoReflect().Descriptor().Fields().ByName(name)
	if fd == nil {
		panic("state: no field " + string(name))
	}
	return fd.Number()
}

// Encoded sizes of singular fields, 0 when unset.
func strSize(n protoreflect.FieldNumber, v string) int {
	if v == "" {
		return 0
	}
	return protowire.SizeTag(n) + protowire.SizeBytes(len(v))
}

func varintSize(n protoreflect.FieldNumber, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(n) + protowire.SizeVarint(v)
}

func serviceSize(svc *apipb.Service) int64 {
	return int64(proto.Size(svc) - strSize(svcPeer, svc.Peer) - strSize(svcVIP, svc.VirtualIp) -
		varintSize(svcCreate, svc.CreateIndex) - varintSize(svcModify, svc.ModifyIndex))
}

func instanceSize(in *apipb.Instance) int64 {
	n := proto.Size(in) - strSize(instPeer, in.Peer) - varintSize(instHealth, uint64(in.Health)) -
		varintSize(instCreate, in.CreateIndex) - varintSize(instModify, in.ModifyIndex)
	if in.Ttl != nil {
		n -= protowire.SizeTag(instTTL) + protowire.SizeBytes(proto.Size(in.Ttl))
	}
	return int64(n)
}

func (u *ImportUsage) zero() bool { return *u == ImportUsage{} }

// ImportedSize is what a change counts towards the bytes quota: the size
// of the service or instance as the peer sent it, without the fields this
// site stamps; 0 for deletions.
func ImportedSize(c *apipb.Change) int64 {
	switch x := c.GetChange().(type) {
	case *apipb.Change_Service:
		return serviceSize(x.Service)
	case *apipb.Change_Instance:
		return instanceSize(x.Instance)
	}
	return 0
}

// quotas keeps what each peer's imports hold up to date, and checks
// import batches against their limits. It is part of the store: the
// store's lock guards it.
type quotas struct {
	use map[string]*ImportUsage // by peer name
}

// usage returns the peer's usage record, creating it.
func (q *quotas) usage(peer string) *ImportUsage {
	u := q.use[peer]
	if u == nil {
		u = &ImportUsage{}
		q.use[peer] = u
	}
	return u
}

// of returns what the peer's imports hold.
func (q *quotas) of(peer string) ImportUsage {
	if u := q.use[peer]; u != nil {
		return *u
	}
	return ImportUsage{}
}

// forgetIfZero drops the peer's record when its imports hold nothing.
func (q *quotas) forgetIfZero(peer string) {
	if u := q.use[peer]; u != nil && u.zero() {
		delete(q.use, peer)
	}
}

// ImportUsage returns what the peer's imports hold.
func (s *Store) ImportUsage(peer string) ImportUsage {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.quota.of(peer)
}

// recount rebuilds every peer's usage from the catalog and the virtual
// IPs in use (after a restore).
func (q *quotas) recount(c *catalog, vips map[netip.Addr]ServiceKey) {
	q.use = make(map[string]*ImportUsage)
	for k, svc := range c.services {
		if k.Peer == "" {
			continue
		}
		u := q.usage(k.Peer)
		u.Services++
		u.Bytes += serviceSize(svc)
		if svc.VirtualIp == "" {
			u.WithoutVIP++
		} else if vips[vipOf(svc)] == k {
			u.VIPs++
		}
		for _, in := range c.instances[k] {
			u.Instances++
			u.Bytes += instanceSize(in)
		}
	}
}

// CheckImport reports whether applying b now would be refused for a quota
// (a *QuotaError), without changing anything. The importer calls it before
// proposing a batch; apply makes the same check.
func (s *Store) CheckImport(b *ImportBatch) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if imp, ok := s.imports[b.Peer]; ok && !b.Resync && b.Version < imp.Version {
		return nil // a stale delta, ignored by apply
	}
	_, err := s.quota.check(&s.catalog, b)
	return err
}

// changeSizes returns ImportedSize of each change of b.
func changeSizes(b *ImportBatch) []int64 {
	sizes := make([]int64, len(b.Changes))
	for i, c := range b.Changes {
		sizes[i] = ImportedSize(c)
	}
	return sizes
}

// check refuses a batch that would take the peer's imports over
// a limit of the batch. A batch that does not grow a count already over its
// limit (lowered since) passes, so that a peer over quota can shrink. It
// returns the sizes of the batch's changes, for apply.
func (q *quotas) check(c *catalog, b *ImportBatch) ([]int64, error) {
	sizes := changeSizes(b)
	lim := b.Limits
	if lim == nil {
		return sizes, nil
	}
	cur := q.of(b.Peer)
	// Most batches are far from every quota even if all they carry were
	// new: then there is nothing to work out.
	bound := cur
	if b.Resync {
		bound = ImportUsage{} // it replaces the imports
	}
	for i, c := range b.Changes {
		switch c.Change.(type) {
		case *apipb.Change_Service:
			bound.Services++
		case *apipb.Change_Instance:
			bound.Instances++
		}
		bound.Bytes += sizes[i]
	}
	if within(bound, lim) {
		return sizes, nil
	}
	var next ImportUsage
	if b.Resync {
		next = resyncUsage(b, sizes)
	} else {
		next = c.deltaUsage(b, cur, sizes)
	}
	for _, q := range []struct {
		name       string
		limit      uint64
		now, would int64
	}{
		{QuotaServices, uint64(lim.MaxServices), int64(cur.Services), int64(next.Services)},
		{QuotaInstances, uint64(lim.MaxInstances), int64(cur.Instances), int64(next.Instances)},
		{QuotaBytes, lim.MaxBytes, cur.Bytes, next.Bytes},
	} {
		if q.limit > 0 && q.would > 0 && uint64(q.would) > q.limit && q.would > q.now {
			return nil, &QuotaError{Peer: b.Peer, Quota: q.name, Limit: q.limit, Would: uint64(q.would)}
		}
	}
	return sizes, nil
}

// within reports whether u is within every limit of lim.
func within(u ImportUsage, lim *statepb.ImportLimits) bool {
	ok := func(v int64, limit uint64) bool { return limit == 0 || v <= 0 || uint64(v) <= limit }
	return ok(int64(u.Services), uint64(lim.MaxServices)) && ok(int64(u.Instances), uint64(lim.MaxInstances)) && ok(u.Bytes, lim.MaxBytes)
}

// resyncUsage is what the peer's imports would hold after the resync b: its
// services, and the instances of those services. (An instance sent before
// its service counts although apply may skip it: the estimate never falls
// short.)
func resyncUsage(b *ImportBatch, sizes []int64) ImportUsage {
	var u ImportUsage
	svcs := make(map[ServiceKey]int64)
	for i, c := range b.Changes {
		if x, ok := c.Change.(*apipb.Change_Service); ok {
			svcs[ServiceKey{b.Peer, x.Service.Namespace, x.Service.Name}] = sizes[i]
		}
	}
	for _, n := range svcs {
		u.Services++
		u.Bytes += n
	}
	for i, c := range b.Changes {
		if x, ok := c.Change.(*apipb.Change_Instance); ok {
			if _, ok := svcs[ServiceKey{b.Peer, x.Instance.Namespace, x.Instance.Service}]; ok {
				u.Instances++
				u.Bytes += sizes[i]
			}
		}
	}
	return u
}

// deltaUsage is what the peer's imports would hold after the delta b,
// following apply's rules without touching the catalog: an overlay holds
// the records the batch has changed so far.
func (c *catalog) deltaUsage(b *ImportBatch, u ImportUsage, sizes []int64) ImportUsage {
	const gone = -1
	svcs := make(map[ServiceKey]int64)             // size, or gone
	insts := make(map[ServiceKey]map[string]int64) // size, or gone
	cleared := make(map[ServiceKey]bool)           // the stored instances were deleted
	service := func(k ServiceKey) (int64, bool) {
		if n, ok := svcs[k]; ok {
			return n, n != gone
		}
		if svc, ok := c.services[k]; ok {
			return serviceSize(svc), true
		}
		return 0, false
	}
	instance := func(k ServiceKey, id string) (int64, bool) {
		if n, ok := insts[k][id]; ok {
			return n, n != gone
		}
		if in, ok := c.instances[k][id]; ok && !cleared[k] {
			return instanceSize(in), true
		}
		return 0, false
	}
	setInstance := func(k ServiceKey, id string, n int64) {
		if insts[k] == nil {
			insts[k] = make(map[string]int64)
		}
		insts[k][id] = n
	}
	for i, ch := range b.Changes {
		switch x := ch.Change.(type) {
		case *apipb.Change_Service:
			k := ServiceKey{b.Peer, x.Service.Namespace, x.Service.Name}
			n := sizes[i]
			if old, ok := service(k); ok {
				u.Bytes += n - old
			} else {
				u.Services++
				u.Bytes += n
			}
			svcs[k] = n
		case *apipb.Change_Instance:
			k := ServiceKey{b.Peer, x.Instance.Namespace, x.Instance.Service}
			if _, ok := service(k); !ok {
				continue // apply ignores an instance of an unknown service
			}
			n := sizes[i]
			if old, ok := instance(k, x.Instance.Id); ok {
				u.Bytes += n - old
			} else {
				u.Instances++
				u.Bytes += n
			}
			setInstance(k, x.Instance.Id, n)
		case *apipb.Change_ServiceDeleted:
			k := ServiceKey{b.Peer, x.ServiceDeleted.Namespace, x.ServiceDeleted.Name}
			old, ok := service(k)
			if !ok {
				continue
			}
			u.Services--
			u.Bytes -= old
			svcs[k] = gone
			if !cleared[k] {
				for id, in := range c.instances[k] {
					if _, ok := insts[k][id]; !ok {
						u.Instances--
						u.Bytes -= instanceSize(in)
					}
				}
				cleared[k] = true
			}
			for _, n := range insts[k] {
				if n != gone {
					u.Instances--
					u.Bytes -= n
				}
			}
			delete(insts, k)
		case *apipb.Change_InstanceDeleted:
			k := ServiceKey{b.Peer, x.InstanceDeleted.Namespace, x.InstanceDeleted.Service}
			if old, ok := instance(k, x.InstanceDeleted.Id); ok {
				u.Instances--
				u.Bytes -= old
				setInstance(k, x.InstanceDeleted.Id, gone)
			}
		}
	}
	return u
}
