package state

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// FSM adapts a Store to Raft.
type FSM struct{ *Store }

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// Result is what Apply returns for each log: the command's output or the
// reason it was rejected.
type Result struct {
	Value any
	Err   error
}

// CommandFormat is the command format this server writes, and the newest
// it applies. Format 1 is the format since the first release (a command
// without a format is format 1). See the package doc for how it changes.
const CommandFormat = 1

// Encode marshals a command for the Raft log, stamped with CommandFormat
// unless it carries a format already.
func Encode(cmd *statepb.Command) ([]byte, error) {
	if cmd.Format == 0 {
		cmd.Format = CommandFormat
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applyLog(l)
}

// ApplyBatch implements raft.BatchingFSM: one lock for a batch of logs.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, l := range logs {
		out[i] = f.applyLog(l)
	}
	return out
}

func (f *FSM) applyLog(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		if l.Index > f.index && f.halted == nil {
			f.index = l.Index
		}
		return nil
	}
	var cmd statepb.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		// Only our own servers write the log, so this is a bug or a
		// corrupt store; rejecting the entry keeps replicas identical.
		return Result{Err: fmt.Errorf("decode command at index %d: %w", l.Index, err)}
	}
	v, err := f.applyLocked(l.Index, &cmd)
	return Result{Value: v, Err: err}
}

const snapshotVersion = 1

// Snapshot implements raft.FSM. Values are immutable, so copying the maps'
// pointers under the read lock is a consistent point-in-time view.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.halted != nil {
		return nil, fmt.Errorf("snapshot: %w", f.halted)
	}
	snap := &fsmSnapshot{index: f.index, site: f.site}
	snap.services = make([]*apipb.Service, 0, len(f.services))
	snap.instances = make([]*apipb.Instance, 0, f.nInst)
	for k, svc := range f.services {
		snap.services = append(snap.services, svc)
		for _, in := range f.instances[k] {
			snap.instances = append(snap.instances, in)
		}
	}
	for _, t := range f.tokens {
		snap.tokens = append(snap.tokens, t)
	}
	for _, e := range f.entries {
		snap.entries = append(snap.entries, e)
	}
	for _, b := range f.foreign {
		snap.foreign = append(snap.foreign, b)
	}
	for _, e := range f.exports {
		snap.exports = append(snap.exports, e)
	}
	for _, a := range f.agents {
		snap.agents = append(snap.agents, a)
	}
	for _, p := range f.imports {
		snap.imports = append(snap.imports, p)
	}
	if f.vip.last.IsValid() {
		snap.vipLast = f.vip.last.AsSlice()
	}
	for _, in := range f.intentions {
		snap.intentions = append(snap.intentions, in)
	}
	for _, g := range f.gateways {
		snap.gateways = append(snap.gateways, g)
	}
	return snap, nil
}

type fsmSnapshot struct {
	index      uint64
	site       *statepb.Bootstrap
	services   []*apipb.Service
	instances  []*apipb.Instance
	tokens     []*TokenRecord
	entries    []*apipb.WorkloadEntry
	foreign    []*statepb.ForeignBundle
	exports    []*apipb.Export
	agents     []*apipb.Agent
	imports    []*statepb.PeerImport
	vipLast    []byte
	intentions []*apipb.Intention
	gateways   []*apipb.GatewayRecord
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	put := func(m proto.Message) error {
		_, err := protodelim.MarshalTo(bw, m)
		return err
	}
	// One record and one wrapper per kind serve every record of that kind:
	// each is marshalled before the next is set.
	rec := &statepb.SnapshotRecord{}
	if err := put(&statepb.SnapshotHeader{Version: snapshotVersion, Index: s.index}); err != nil {
		return err
	}
	if s.site != nil {
		if err := put(&statepb.SnapshotRecord{Record: &statepb.SnapshotRecord_Site{Site: s.site}}); err != nil {
			return err
		}
	}
	{
		one := &statepb.SnapshotRecord_Service{}
		rec.Record = one
		for _, v := range s.services {
			one.Service = serviceToState(v)
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	{
		one := &statepb.SnapshotRecord_Instance{}
		rec.Record = one
		for _, v := range s.instances {
			one.Instance = instanceToState(v)
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	{
		one := &statepb.SnapshotRecord_Token{}
		rec.Record = one
		for _, v := range s.tokens {
			one.Token = tokenRecordToState(v)
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	{
		one := &statepb.SnapshotRecord_Entry{}
		rec.Record = one
		for _, v := range s.entries {
			one.Entry = entryToState(v)
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	{
		one := &statepb.SnapshotRecord_ForeignBundle{}
		rec.Record = one
		for _, v := range s.foreign {
			one.ForeignBundle = v
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	{
		one := &statepb.SnapshotRecord_Export{}
		rec.Record = one
		for _, v := range s.exports {
			one.Export = exportToState(v)
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	{
		one := &statepb.SnapshotRecord_Agent{}
		rec.Record = one
		for _, v := range s.agents {
			one.Agent = agentToState(v)
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	{
		one := &statepb.SnapshotRecord_PeerImport{}
		rec.Record = one
		for _, v := range s.imports {
			one.PeerImport = v
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	{
		one := &statepb.SnapshotRecord_Intention{}
		rec.Record = one
		for _, v := range s.intentions {
			one.Intention = intentionToState(v)
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	{
		one := &statepb.SnapshotRecord_Gateway{}
		rec.Record = one
		for _, v := range s.gateways {
			one.Gateway = gatewayToState(v)
			if err := put(rec); err != nil {
				return err
			}
		}
	}
	if s.vipLast != nil {
		if err := put(&statepb.SnapshotRecord{Record: &statepb.SnapshotRecord_VipCursor{VipCursor: &statepb.VIPCursor{Last: s.vipLast}}}); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func (s *fsmSnapshot) Release() {}

// maxSnapshotRecord bounds one record; real ones are a few hundred bytes.
const maxSnapshotRecord = 4 << 20

// Restore implements raft.FSM: it replaces the whole state, or nothing.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	n := &Store{}
	n.reset()
	br := bufio.NewReaderSize(rc, 256<<10)
	opts := protodelim.UnmarshalOptions{MaxSize: maxSnapshotRecord}
	var hdr statepb.SnapshotHeader
	if err := opts.UnmarshalFrom(br, &hdr); err != nil {
		return fmt.Errorf("restore snapshot: header: %w", err)
	}
	if hdr.Version != snapshotVersion {
		return fmt.Errorf("restore snapshot: version %d, this server reads %d", hdr.Version, snapshotVersion)
	}
	for {
		var rec statepb.SnapshotRecord
		err := opts.UnmarshalFrom(br, &rec)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("restore snapshot: record: %w", err)
		}
		switch r := rec.Record.(type) {
		case *statepb.SnapshotRecord_Site:
			n.site = r.Site
		case *statepb.SnapshotRecord_Service:
			svc := serviceToAPI(r.Service)
			n.services[KeyOf(svc)] = svc
		case *statepb.SnapshotRecord_Instance:
			in := instanceToAPI(r.Instance)
			k := KeyOfInstance(in)
			if n.instances[k] == nil {
				n.instances[k] = make(map[string]*apipb.Instance)
			}
			n.instances[k][in.Id] = in
			n.nInst++
		case *statepb.SnapshotRecord_Token:
			n.putToken(tokenRecordOf(r.Token))
		case *statepb.SnapshotRecord_Entry:
			n.entries[r.Entry.Id] = entryToAPI(r.Entry)
		case *statepb.SnapshotRecord_ForeignBundle:
			n.foreign[r.ForeignBundle.TrustDomain] = r.ForeignBundle
		case *statepb.SnapshotRecord_Export:
			n.exports[ServiceKey{"", r.Export.Namespace, r.Export.Service}] = exportToAPI(r.Export)
		case *statepb.SnapshotRecord_Agent:
			n.agents[r.Agent.Node] = agentToAPI(r.Agent)
		case *statepb.SnapshotRecord_PeerImport:
			n.imports[r.PeerImport.Peer] = r.PeerImport
		case *statepb.SnapshotRecord_Intention:
			n.intentions[intentionKey(r.Intention.Source, r.Intention.Destination)] = intentionToAPI(r.Intention)
		case *statepb.SnapshotRecord_Gateway:
			n.gateways[r.Gateway.Name] = gatewayToAPI(r.Gateway)
		case *statepb.SnapshotRecord_VipCursor:
			n.vip.last, _ = netip.AddrFromSlice(r.VipCursor.Last)
		default:
			return fmt.Errorf("restore snapshot: unknown record %T", rec.Record)
		}
	}
	for k, svc := range n.services {
		if n.instances[k] == nil {
			n.instances[k] = make(map[string]*apipb.Instance)
		}
		n.vip.track(svc)
	}
	for k := range n.instances {
		if _, ok := n.services[k]; !ok {
			return fmt.Errorf("restore snapshot: instances of unknown service %s/%s", k.Namespace, k.Name)
		}
	}
	n.quota.recount(&n.catalog, n.vip.byAddr)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index, f.site, f.halted = hdr.Index, n.site, nil
	f.catalog = n.catalog
	f.tokens, f.byHash = n.tokens, n.byHash
	f.entries = n.entries
	f.foreign = n.foreign
	f.exports = n.exports
	f.agents = n.agents
	f.imports = n.imports
	f.vip, f.quota = vipAllocator{byAddr: n.vip.byAddr, last: n.vip.last}, n.quota
	f.intentions, f.gateways = n.intentions, n.gateways
	wake(&f.meshCh)
	f.events.restart(hdr.Index)
	wake(&f.identityCh)
	wake(&f.exportsCh)
	return nil
}
