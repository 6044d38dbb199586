package replication

import (
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// Registry holds the runtime state of this server's replication streams,
// per peer, for status calls and metrics. Streams run on the leader, so a
// follower's registry is empty.
type Registry struct {
	mu      sync.Mutex
	exports map[string]*ExportStats
	imports map[string]*ImportStats
	now     func() time.Time

	connected, lag, bytesSent, changesSent, changesApplied, batches *prometheus.Desc
	refusals, withoutVIP, streamsRefused                            *prometheus.Desc
}

// NewRegistry returns a registry; its metrics are registered with reg
// when reg is not nil.
func NewRegistry(reg prometheus.Registerer, now func() time.Time) *Registry {
	if now == nil {
		now = time.Now
	}
	peer := []string{"peer"}
	r := &Registry{
		exports: make(map[string]*ExportStats),
		imports: make(map[string]*ImportStats),
		now:     now,
		connected: prometheus.NewDesc("strait_federation_stream_connected",
			"1 while the replication stream with the peer is up, by direction (import: from the peer; export: to it).", []string{"peer", "direction"}, nil),
		lag: prometheus.NewDesc("strait_federation_export_lag_seconds",
			"How long the oldest change sent to the peer has waited for its acknowledgement (0 when all are acknowledged).", peer, nil),
		bytesSent: prometheus.NewDesc("strait_federation_export_bytes_total",
			"Bytes of replication messages sent to the peer.", peer, nil),
		changesSent: prometheus.NewDesc("strait_federation_export_changes_total",
			"Catalog changes sent to the peer.", peer, nil),
		changesApplied: prometheus.NewDesc("strait_federation_import_changes_total",
			"Catalog changes received from the peer and committed.", peer, nil),
		batches: prometheus.NewDesc("strait_federation_import_batches_total",
			"Raft commands that applied changes from the peer.", peer, nil),
		refusals: prometheus.NewDesc("strait_federation_import_refusals_total",
			"Replication streams from the peer dropped because what it sent was refused, by reason: services, instances or bytes (a quota), resync_bytes or resync_timeout.", []string{"peer", "reason"}, nil),
		withoutVIP: prometheus.NewDesc("strait_federation_import_services_without_vip",
			"Services imported from the peer that have no virtual IP (the peer's share of the range, or the range, is used up).", peer, nil),
		streamsRefused: prometheus.NewDesc("strait_federation_export_streams_refused_total",
			"Replication streams the peer opened beyond peer_max_streams, refused.", peer, nil),
	}
	if reg != nil {
		reg.MustRegister(r)
	}
	return r
}

// Export returns the peer's export stats, creating them.
func (r *Registry) Export(peer string) *ExportStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.exports[peer]
	if e == nil {
		e = &ExportStats{now: r.now}
		r.exports[peer] = e
	}
	return e
}

// Import returns the peer's import stats, creating them.
func (r *Registry) Import(peer string) *ImportStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := r.imports[peer]
	if i == nil {
		i = &ImportStats{}
		r.imports[peer] = i
	}
	return i
}

// Forget drops a removed peer's stats.
func (r *Registry) Forget(peer string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.exports, peer)
	delete(r.imports, peer)
}

// Describe implements prometheus.Collector.
func (r *Registry) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{r.connected, r.lag, r.bytesSent, r.changesSent, r.changesApplied, r.batches, r.refusals, r.withoutVIP, r.streamsRefused} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (r *Registry) Collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for peer, e := range r.exports {
		s := e.Status()
		ch <- prometheus.MustNewConstMetric(r.connected, prometheus.GaugeValue, b(s.Connected), peer, "export")
		ch <- prometheus.MustNewConstMetric(r.lag, prometheus.GaugeValue, s.Lag.AsDuration().Seconds(), peer)
		ch <- prometheus.MustNewConstMetric(r.bytesSent, prometheus.CounterValue, float64(s.BytesSent), peer)
		ch <- prometheus.MustNewConstMetric(r.changesSent, prometheus.CounterValue, float64(e.changeCount()), peer)
		ch <- prometheus.MustNewConstMetric(r.streamsRefused, prometheus.CounterValue, float64(e.refusedCount()), peer)
	}
	for peer, i := range r.imports {
		connected, _, changes, batches := i.snapshot()
		ch <- prometheus.MustNewConstMetric(r.connected, prometheus.GaugeValue, b(connected), peer, "import")
		ch <- prometheus.MustNewConstMetric(r.changesApplied, prometheus.CounterValue, float64(changes), peer)
		ch <- prometheus.MustNewConstMetric(r.batches, prometheus.CounterValue, float64(batches), peer)
		refusals, withoutVIP := i.limits()
		for reason, n := range refusals {
			ch <- prometheus.MustNewConstMetric(r.refusals, prometheus.CounterValue, float64(n), peer, reason)
		}
		ch <- prometheus.MustNewConstMetric(r.withoutVIP, prometheus.GaugeValue, float64(withoutVIP), peer)
	}
}

type pendingAck struct {
	version uint64
	at      time.Time
}

// ExportStats is one peer's export stream as this server sees it. A nil
// *ExportStats ignores everything.
type ExportStats struct {
	mu        sync.Mutex
	now       func() time.Time
	open      int // streams holding a slot (Open)
	refused   uint64
	streams   int
	sentV     uint64
	ackedV    uint64
	pending   []pendingAck
	bytesSent uint64
	changes   uint64
}

// ErrTooManyStreams is what Open returns when the peer already has its
// maximum of replication streams open.
var ErrTooManyStreams = errors.New("too many replication streams from this peer")

// Open takes one of the peer's limit stream slots (none when limit <= 0);
// release gives it back. When all are taken it counts the refusal and
// returns ErrTooManyStreams.
func (e *ExportStats) Open(limit int) (release func(), err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if limit > 0 && e.open >= limit {
		e.refused++
		return nil, ErrTooManyStreams
	}
	e.open++
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			e.open--
			e.mu.Unlock()
		})
	}, nil
}

func (e *ExportStats) refusedCount() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.refused
}

func (e *ExportStats) attach() {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.streams++
	e.pending = nil
}

func (e *ExportStats) detach() {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.streams--
	e.pending = nil
}

func (e *ExportStats) sent(version uint64, changes int) {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sentV = version
	e.changes += uint64(changes)
	if version > e.ackedV && (len(e.pending) == 0 || e.pending[len(e.pending)-1].version < version) {
		e.pending = append(e.pending, pendingAck{version, e.now()})
	}
}

func (e *ExportStats) bytes(n int) {
	if e == nil {
		return
	}
	e.mu.Lock()
	e.bytesSent += uint64(n)
	e.mu.Unlock()
}

func (e *ExportStats) acked(v uint64) {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ackedV = max(e.ackedV, v)
	i := 0
	for i < len(e.pending) && e.pending[i].version <= v {
		i++
	}
	e.pending = e.pending[i:]
}

func (e *ExportStats) changeCount() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.changes
}

// Status reports the stream's progress.
func (e *ExportStats) Status() *apipb.ExportStatus {
	if e == nil {
		return &apipb.ExportStatus{}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s := &apipb.ExportStatus{Connected: e.streams > 0, SentVersion: e.sentV, AckedVersion: e.ackedV, BytesSent: e.bytesSent, Lag: durationpb.New(0)}
	if len(e.pending) > 0 {
		s.Lag = durationpb.New(e.now().Sub(e.pending[0].at))
	}
	return s
}

// ImportStats is one peer's import stream as this server sees it. A nil
// *ImportStats ignores everything.
type ImportStats struct {
	mu         sync.Mutex
	heard      time.Time // last message from the peer
	connected  bool
	lastErr    string
	changes    uint64
	batches    uint64
	refusals   map[string]uint64 // by reason
	withoutVIP int
}

func (i *ImportStats) refused(reason string) {
	if i == nil {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.refusals == nil {
		i.refusals = make(map[string]uint64)
	}
	i.refusals[reason]++
}

func (i *ImportStats) setWithoutVIP(n int) {
	if i == nil {
		return
	}
	i.mu.Lock()
	i.withoutVIP = n
	i.mu.Unlock()
}

func (i *ImportStats) limits() (refusals map[string]uint64, withoutVIP int) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return maps.Clone(i.refusals), i.withoutVIP
}

func (i *ImportStats) setConnected(ok bool, err error) {
	if i == nil {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.connected = ok
	if err != nil {
		i.lastErr = err.Error()
	} else if ok {
		i.lastErr = ""
	}
}

func (i *ImportStats) heardAt(t time.Time) {
	if i == nil {
		return
	}
	i.mu.Lock()
	i.heard = t
	i.mu.Unlock()
}

func (i *ImportStats) applied(changes int) {
	if i == nil {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.changes += uint64(changes)
	i.batches++
}

func (i *ImportStats) snapshot() (connected bool, lastErr string, changes, batches uint64) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.connected, i.lastErr, i.changes, i.batches
}

// Fill sets the runtime fields of an import status: the stream's state,
// and the last contact when the stream has heard from the peer since the
// last contact committed.
func (i *ImportStats) Fill(s *apipb.ImportStatus) {
	if i == nil {
		return
	}
	s.Connected, s.LastError, _, _ = i.snapshot()
	i.mu.Lock()
	heard := i.heard
	i.mu.Unlock()
	if !heard.IsZero() && (s.LastContact == nil || heard.After(s.LastContact.AsTime())) {
		s.LastContact = timestamppb.New(heard)
	}
}
