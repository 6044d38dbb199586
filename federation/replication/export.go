// Package replication carries exported services between federated sites.
//
// Each site's leader keeps one stream open to each peer for what it
// imports from that peer (pull): it calls Federation.Replicate on any of
// the peer's servers, which hands the stream on to its leader, and the
// peer's leader runs an Exporter on it. The exporter sends the full export
// first (resync ... synced), then deltas: services exported to the peer and
// their passing instances, its gateway addresses and its trust bundle. The
// importer commits what it receives through its own Raft and acknowledges
// each version once committed. Versions are the exporter's catalog index.
//
// The exporter never keeps history: it remembers what it has sent, marks
// keys dirty as catalog and export changes arrive, and on each flush sends
// the difference between the current state and what the peer has. Under a
// burst, changes to one key coalesce; after a reconnect, the importer
// applies the resync as one diff, so its catalog never flaps.
//
// Limits: what a peer can make this site hold is bounded. The importer
// sends its site's per-peer quotas (services, instances, bytes) with every
// batch, for the state machine to enforce, and counts a resync as it
// arrives, dropping the stream as soon as it is over a quota, over twice
// the bytes quota on the wire, or older than ResyncTimeout (RefusedError);
// the peer's earlier imports stay as they were. ExportStats.Open caps the
// streams one peer holds open to the exporter's site.
//
// The package reads its site's state through the Catalog interface and
// commits what it imports through Importer.Apply: it links neither the
// state machine (controlplane/state) nor its format, so a change to either
// does not reach the replication protocol.
package replication

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// Limits of one event. The importer's gRPC client accepts 4 MiB messages;
// one instance is at most ~40 KiB (64 meta entries of 640 bytes).
const (
	maxEventBytes   = 1 << 20
	maxEventChanges = 1000
)

// DefaultHeartbeat is how often an idle exporter says it is alive.
const DefaultHeartbeat = 5 * time.Second

// Stream is the server side of a Replicate call.
type Stream interface {
	Context() context.Context
	Send(*apipb.ReplicationEvent) error
	Recv() (*apipb.ReplicateRequest, error)
}

// Exporter serves one peer's replication stream on the leader.
type Exporter struct {
	Store Catalog
	// Peer is the peer's local name; TrustDomain its trust domain.
	Peer, TrustDomain string
	// Bundle returns this site's bundle document and sequence.
	Bundle func() (doc []byte, sequence uint64, err error)
	// Heartbeat interval; DefaultHeartbeat when zero.
	Heartbeat time.Duration
	Logger    *slog.Logger
	// Stats receives the stream's progress; may be nil.
	Stats *ExportStats
}

type sentService struct {
	svc       *apipb.Service
	instances map[string]*apipb.Instance
}

// exportRun is one stream's state.
type exportRun struct {
	*Exporter
	stream  Stream
	sent    map[ServiceKey]*sentService
	gws     []string
	bundleN uint64
	version uint64 // last version sent

	all      bool
	services map[ServiceKey]bool            // recompute the whole service
	defs     map[ServiceKey]bool            // recompute the definition
	insts    map[ServiceKey]map[string]bool // recompute these instances
}

// Serve runs the stream until the peer leaves, ctx ends, the peering is
// removed or sending fails.
func (e *Exporter) Serve(ctx context.Context, stream Stream) error {
	if e.Heartbeat <= 0 {
		e.Heartbeat = DefaultHeartbeat
	}
	if e.Logger == nil {
		e.Logger = slog.Default()
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.GetHello() == nil {
		return status.Error(codes.InvalidArgument, "a replication stream starts with a hello")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	acks := make(chan uint64, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				cancel()
				return
			}
			a := m.GetAck()
			if a == nil {
				recvErr <- status.Error(codes.InvalidArgument, "after the hello, only acknowledgements are expected")
				cancel()
				return
			}
			select { // keep only the latest
			case <-acks:
			default:
			}
			acks <- a.Version
		}
	}()

	r := &exportRun{Exporter: e, stream: stream, sent: make(map[ServiceKey]*sentService)}
	r.clearDirty()
	e.Stats.attach()
	defer e.Stats.detach()
	e.Logger.Info("replication stream attached", "peer", e.Peer, "site", first.GetHello().Site)

	// Subscribe before the first read of the state: a change after the
	// read is then seen again (harmless), never missed.
	sub := e.Store.Subscribe(e.Store.Index())
	events := make(chan *apipb.WatchEvent, 64)
	go func() {
		defer close(events)
		for {
			ev, err := sub.Next(ctx)
			if err != nil {
				return
			}
			select {
			case events <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	// The change channels are taken before each read of the state, so a
	// change that lands during a flush wakes the next iteration. Each
	// change closes its channel and makes a new one, so a channel that
	// differs from the one held means a change since it was taken, even
	// when the select below woke for something else.
	exportsCh, identityCh := e.Store.ExportsChanged(), e.Store.IdentityChanged()
	if err := r.resync(); err != nil {
		return err
	}
	hb := time.NewTicker(e.Heartbeat)
	defer hb.Stop()
	for {
		select {
		case <-ctx.Done():
			select {
			case err := <-recvErr:
				if errors.Is(err, context.Canceled) {
					return nil
				}
				return err
			default:
			}
			return ctx.Err()
		case ev, ok := <-events:
			if !ok {
				return ctx.Err()
			}
			r.mark(ev)
		drain:
			for len(events) > 0 {
				select {
				case ev := <-events:
					r.mark(ev)
				default:
					break drain
				}
			}
		case <-exportsCh: // handled below
		case <-identityCh:
		case v := <-acks:
			e.Stats.acked(v)
			continue
		case <-hb.C:
			if err := r.send(&apipb.ReplicationEvent{Version: r.version}); err != nil {
				return err
			}
			continue
		}
		if ch := e.Store.ExportsChanged(); ch != exportsCh {
			exportsCh, r.all = ch, true
		}
		if ch := e.Store.IdentityChanged(); ch != identityCh {
			identityCh = ch
			if !e.peered() {
				return status.Errorf(codes.PermissionDenied, "the peering with %s was removed", e.Peer)
			}
		}
		if err := r.flush(false); err != nil {
			return err
		}
	}
}

// peered reports whether the peering still exists.
func (e *Exporter) peered() bool {
	return e.Store.PeerName(e.TrustDomain) == e.Peer
}

func (r *exportRun) clearDirty() {
	r.all = false
	r.services = make(map[ServiceKey]bool)
	r.defs = make(map[ServiceKey]bool)
	r.insts = make(map[ServiceKey]map[string]bool)
}

// mark records what a catalog event touched. Imported services are never
// exported again, so they are ignored.
func (r *exportRun) mark(ev *apipb.WatchEvent) {
	if ev.Resync {
		r.all = true
	}
	if r.all {
		return
	}
	for _, c := range ev.Changes {
		switch x := c.Change.(type) {
		case *apipb.Change_Service:
			if k := keyOf(x.Service); k.Peer == "" {
				r.defs[k] = true
			}
		case *apipb.Change_ServiceDeleted:
			if k := x.ServiceDeleted; k.Peer == "" {
				r.services[ServiceKey{Namespace: k.Namespace, Name: k.Name}] = true
			}
		case *apipb.Change_Instance:
			if x.Instance.Peer == "" {
				r.markInstance(keyOfInstance(x.Instance), x.Instance.Id)
			}
		case *apipb.Change_InstanceDeleted:
			if k := x.InstanceDeleted; k.Peer == "" {
				r.markInstance(ServiceKey{Namespace: k.Namespace, Name: k.Service}, k.Id)
			}
		}
	}
}

func (r *exportRun) markInstance(k ServiceKey, id string) {
	m := r.insts[k]
	if m == nil {
		m = make(map[string]bool)
		r.insts[k] = m
	}
	m[id] = true
}

func (r *exportRun) resync() error {
	r.all = true
	return r.flush(true)
}

// flush sends the difference between the state and what the peer has for
// every dirty key.
func (r *exportRun) flush(resync bool) error {
	version := r.Store.Index()
	var out []*apipb.Change
	gwChanged := false
	if r.all {
		keys := make(map[ServiceKey]bool)
		for k := range r.sent {
			keys[k] = true
		}
		for _, k := range r.Store.ExportedServices(r.Peer) {
			keys[k] = true
		}
		for k := range keys {
			out = r.diffService(out, k)
		}
		gwChanged = true
	} else {
		for k := range r.services {
			out = r.diffService(out, k)
		}
		for k := range r.defs {
			if !r.services[k] {
				out = r.diffDefinition(out, k)
			}
		}
		for k, ids := range r.insts {
			if r.services[k] || r.defs[k] {
				continue // already recomputed whole
			}
			for id := range ids {
				out = r.diffInstance(out, k, id)
			}
		}
		gwChanged = r.services[gatewayKey] || r.defs[gatewayKey] || r.insts[gatewayKey] != nil
	}
	r.clearDirty()

	first := &apipb.ReplicationEvent{Resync: resync}
	if gwChanged {
		if gws := r.Store.GatewayAddresses(); resync || !slices.Equal(gws, r.gws) {
			r.gws = gws
			first.Gateways = &apipb.GatewaySet{Addresses: gws}
		}
	}
	if doc, seq, err := r.Bundle(); err != nil {
		r.Logger.Warn("replication: own bundle unavailable", "err", err)
	} else if resync || seq != r.bundleN {
		r.bundleN = seq
		first.Bundle = doc
	}
	if len(out) == 0 && first.Gateways == nil && first.Bundle == nil && !resync {
		return nil
	}
	return r.sendChunked(first, out, version)
}

// sendChunked sends changes in bounded events: the first carries head's
// fields, the last the new version (and synced on a resync); those before
// it carry the previous version, so an acknowledgement never claims a
// version whose changes are still in flight.
func (r *exportRun) sendChunked(head *apipb.ReplicationEvent, changes []*apipb.Change, version uint64) error {
	ev := head
	size := proto.Size(ev)
	for _, c := range changes {
		n := proto.Size(c) + 4
		if len(ev.Changes) > 0 && (size+n > maxEventBytes || len(ev.Changes) >= maxEventChanges) {
			ev.Version = r.version
			if err := r.send(ev); err != nil {
				return err
			}
			ev, size = &apipb.ReplicationEvent{}, 0
		}
		ev.Changes = append(ev.Changes, c)
		size += n
	}
	ev.Version = version
	ev.Synced = head.Resync
	if err := r.send(ev); err != nil {
		return err
	}
	r.version = version
	r.Stats.sent(version, len(changes))
	return nil
}

func (r *exportRun) send(ev *apipb.ReplicationEvent) error {
	if err := r.stream.Send(ev); err != nil {
		return err
	}
	r.Stats.bytes(proto.Size(ev))
	return nil
}

// desired returns the service as the peer should have it: nil when it is
// not exported to the peer or does not exist.
func (r *exportRun) desired(k ServiceKey) (*apipb.Service, []*apipb.Instance) {
	if !r.Store.ExportedTo(k, r.Peer) {
		return nil, nil
	}
	svc, insts, _, ok := r.Store.Service(k, true)
	if !ok {
		return nil, nil
	}
	return svc, insts
}

// diffService compares a whole service.
func (r *exportRun) diffService(out []*apipb.Change, k ServiceKey) []*apipb.Change {
	svc, insts := r.desired(k)
	old := r.sent[k]
	if svc == nil {
		if old != nil {
			delete(r.sent, k)
			out = append(out, &apipb.Change{Change: &apipb.Change_ServiceDeleted{ServiceDeleted: &apipb.ServiceKey{Namespace: k.Namespace, Name: k.Name}}})
		}
		return out
	}
	out = r.putDefinition(out, k, svc)
	cur := r.sent[k]
	want := make(map[string]bool, len(insts))
	for _, in := range insts {
		want[in.Id] = true
		out = r.putInstance(out, cur, in)
	}
	for id := range cur.instances {
		if !want[id] {
			out = r.dropInstance(out, cur, k, id)
		}
	}
	return out
}

// diffDefinition compares a service's definition; a service the peer does
// not have yet is sent whole.
func (r *exportRun) diffDefinition(out []*apipb.Change, k ServiceKey) []*apipb.Change {
	svc, _ := r.desired(k)
	if svc == nil || r.sent[k] == nil {
		return r.diffService(out, k)
	}
	return r.putDefinition(out, k, svc)
}

// diffInstance compares one instance.
func (r *exportRun) diffInstance(out []*apipb.Change, k ServiceKey, id string) []*apipb.Change {
	cur := r.sent[k]
	if cur == nil || !r.Store.ExportedTo(k, r.Peer) {
		return r.diffService(out, k)
	}
	in, ok := r.Store.Instance(&apipb.InstanceKey{Namespace: k.Namespace, Service: k.Name, Id: id})
	if !ok || in.Health != apipb.Health_HEALTH_PASSING {
		return r.dropInstance(out, cur, k, id)
	}
	return r.putInstance(out, cur, in)
}

func (r *exportRun) putDefinition(out []*apipb.Change, k ServiceKey, svc *apipb.Service) []*apipb.Change {
	w := wireService(svc)
	cur := r.sent[k]
	if cur != nil && proto.Equal(cur.svc, w) {
		return out
	}
	if cur == nil {
		cur = &sentService{instances: make(map[string]*apipb.Instance)}
		r.sent[k] = cur
	}
	cur.svc = w
	return append(out, &apipb.Change{Change: &apipb.Change_Service{Service: w}})
}

func (r *exportRun) putInstance(out []*apipb.Change, cur *sentService, in *apipb.Instance) []*apipb.Change {
	w := wireInstance(in)
	if old, ok := cur.instances[in.Id]; ok && proto.Equal(old, w) {
		return out
	}
	cur.instances[in.Id] = w
	return append(out, &apipb.Change{Change: &apipb.Change_Instance{Instance: w}})
}

func (r *exportRun) dropInstance(out []*apipb.Change, cur *sentService, k ServiceKey, id string) []*apipb.Change {
	if _, ok := cur.instances[id]; !ok {
		return out
	}
	delete(cur.instances, id)
	return append(out, &apipb.Change{Change: &apipb.Change_InstanceDeleted{InstanceDeleted: &apipb.InstanceKey{Namespace: k.Namespace, Service: k.Name, Id: id}}})
}

// wireService is a service as sent: without local indexes.
func wireService(svc *apipb.Service) *apipb.Service {
	w := proto.Clone(svc).(*apipb.Service)
	w.CreateIndex, w.ModifyIndex, w.Peer, w.VirtualIp = 0, 0, "", ""
	return w
}

// wireInstance is an instance as sent: passing (implied), without local
// indexes or TTL.
func wireInstance(in *apipb.Instance) *apipb.Instance {
	w := proto.Clone(in).(*apipb.Instance)
	w.CreateIndex, w.ModifyIndex, w.Peer, w.Ttl = 0, 0, "", nil
	w.Health = apipb.Health_HEALTH_UNSPECIFIED
	return w
}
