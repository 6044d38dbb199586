package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/federation/peeraddr"
)

// ErrPeerGone is what Apply returns once the peering no longer exists; the
// importer then stops for good.
var ErrPeerGone = errors.New("peering removed")

// Defaults of an Importer.
const (
	DefaultContactEvery = 15 * time.Second
	DefaultMaxBatch     = 5000
	// DefaultResyncTimeout bounds how long a resync may take to arrive
	// in full.
	DefaultResyncTimeout = 5 * time.Minute
	// DefaultRefusedBackoff is the wait before reconnecting after the
	// peer's export was refused for a quota or limit: it will be refused
	// again until the peer exports less or the quotas change.
	DefaultRefusedBackoff = time.Minute
	// Without a bytes quota, a resync larger than this is refused (about
	// 1M instances).
	maxResyncBytes = 256 << 20
	minBackoff     = 200 * time.Millisecond
	maxBackoff     = 5 * time.Second
)

// Reasons an import is refused, as the refusals metric labels them: the
// three quotas (QuotaServices, QuotaInstances, QuotaBytes), and:
const (
	// RefusedResyncBytes: a resync's messages exceeded twice the bytes
	// quota (256 MiB without one) before it ended.
	RefusedResyncBytes = "resync_bytes"
	// RefusedResyncTimeout: a resync did not end within ResyncTimeout.
	RefusedResyncTimeout = "resync_timeout"
)

// quotaKeys names the server setting of each quota, for messages.
var quotaKeys = map[string]string{
	QuotaServices:  "peer_max_services",
	QuotaInstances: "peer_max_instances",
	QuotaBytes:     "peer_max_import_bytes",
}

// RefusedError is why the importer dropped a stream whose contents it
// refused: a quota or a resync bound. The peer's earlier imports stay.
type RefusedError struct {
	Peer   string
	Reason string // a quota name or RefusedResync*
	Err    error
}

func (e *RefusedError) Error() string {
	key := quotaKeys[e.Reason]
	switch {
	case key != "":
		return fmt.Sprintf("refused the peer's catalog: %v (%s); earlier imports are kept, dropping the stream", e.Err, key)
	case e.Reason == RefusedResyncTimeout:
		return fmt.Sprintf("refused the peer's catalog: %v (peer_resync_timeout); earlier imports are kept, dropping the stream", e.Err)
	}
	return fmt.Sprintf("refused the peer's catalog: %v; earlier imports are kept, dropping the stream", e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// ClientStream is the client side of a Replicate call.
type ClientStream interface {
	Send(*apipb.ReplicateRequest) error
	Recv() (*apipb.ReplicationEvent, error)
}

// Importer keeps the replication stream from one peer open and commits
// what arrives. It runs on the leader, until ctx ends or the peering is
// removed.
type Importer struct {
	Peer string
	// Site is this site's name, sent in the hello.
	Site string
	// Connect opens a Replicate stream to one of the peer's servers; each
	// call may pick another. The stream lives until ctx ends.
	Connect func(ctx context.Context) (ClientStream, error)
	// Apply commits a batch through Raft; ErrPeerGone once the peering is
	// removed.
	Apply func(ctx context.Context, b *Batch) error
	// Bundle stores a bundle document the peer sent.
	Bundle func(ctx context.Context, doc []byte) error
	// Validate checks one change from the peer before anything of it is
	// committed.
	Validate func(*apipb.Change) error
	// Heartbeat is the exporter's heartbeat interval: a stream silent for
	// three of them is considered dead. DefaultHeartbeat when zero.
	Heartbeat time.Duration
	// ContactEvery is how often contact is committed while nothing else
	// is (it is what marks imports fresh on every server).
	ContactEvery time.Duration
	// MaxBatch bounds the changes of one Raft command (DefaultMaxBatch).
	MaxBatch int
	// MinBackoff is the first wait before reconnecting (200ms when zero);
	// it doubles per failure up to 5s.
	MinBackoff time.Duration
	// RefusedBackoff is the wait before reconnecting after a refusal
	// (RefusedError); DefaultRefusedBackoff when zero.
	RefusedBackoff time.Duration
	// Limits are this site's quotas on the peer's imports, sent with every
	// batch for the state machine to enforce; nil: none. The importer
	// also counts a resync as it arrives and drops the stream as soon as
	// it is over one, rather than buffering the rest.
	Limits *Limits
	// ResyncTimeout bounds the time from a resync's first message to its
	// last; DefaultResyncTimeout when zero.
	ResyncTimeout time.Duration
	// WithoutVIP, when set, reports how many of the peer's imported
	// services have no virtual IP; it is read after each commit.
	WithoutVIP func() int
	// Size is what a change counts towards the bytes quota, as the state
	// machine counts it; nil: the record's encoded size (an estimate that
	// never falls short).
	Size func(*apipb.Change) int64
	// AllowLoopbackGateways admits loopback gateway addresses from the
	// peer; only a site that itself runs on loopback (dev, demo, tests)
	// sets it. Every other announced address is checked by peeraddr.
	AllowLoopbackGateways bool
	Logger                *slog.Logger
	Stats                 *ImportStats
}

// Run keeps a session going, reconnecting with jittered backoff.
func (im *Importer) Run(ctx context.Context) {
	if im.Heartbeat <= 0 {
		im.Heartbeat = DefaultHeartbeat
	}
	if im.ContactEvery <= 0 {
		im.ContactEvery = DefaultContactEvery
	}
	if im.MaxBatch <= 0 {
		im.MaxBatch = DefaultMaxBatch
	}
	if im.Logger == nil {
		im.Logger = slog.Default()
	}
	if im.MinBackoff <= 0 {
		im.MinBackoff = minBackoff
	}
	if im.RefusedBackoff <= 0 {
		im.RefusedBackoff = DefaultRefusedBackoff
	}
	if im.ResyncTimeout <= 0 {
		im.ResyncTimeout = DefaultResyncTimeout
	}
	backoff := im.MinBackoff
	failures := 0
	for ctx.Err() == nil {
		progressed, err := im.session(ctx)
		im.Stats.setConnected(false, err)
		switch {
		case errors.Is(err, ErrPeerGone):
			im.Logger.Info("replication stopped: peering removed", "peer", im.Peer)
			return
		case ctx.Err() != nil:
			return
		}
		if progressed {
			backoff, failures = im.MinBackoff, 0
		}
		failures++
		wait := backoff/2 + rand.N(backoff/2+1)
		var refused *RefusedError
		if errors.As(err, &refused) {
			im.Stats.refused(refused.Reason)
			wait = max(wait, im.RefusedBackoff)
			im.Logger.Warn("replication from peer refused", "peer", im.Peer, "reason", refused.Reason, "err", err, "retry_in", wait)
		} else {
			// The first failure in a row is worth a warning; the rest of
			// an outage repeats it at debug level.
			lvl := slog.LevelDebug
			if failures == 1 {
				lvl = slog.LevelWarn
			}
			im.Logger.Log(ctx, lvl, "replication stream from peer ended; reconnecting", "peer", im.Peer, "err", err, "retry_in", wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, max(maxBackoff, im.MinBackoff))
	}
}

type received struct {
	ev  *apipb.ReplicationEvent
	err error
}

// importSession is the state of one stream.
type importSession struct {
	*Importer
	stream   ClientStream
	pending  *Batch
	inResync bool
	resync   *Batch
	// What the resync being received holds so far: bytes on the wire,
	// and services, instances and bytes as the quotas count them.
	resyncWire                  int
	resyncServices, resyncInsts uint64
	resyncBytes                 uint64
	resyncTimer                 *time.Timer // runs while a resync arrives
	acked                       uint64
	lastCommit                  time.Time
	progressed                  bool
	withoutVIP                  int // services without a virtual IP, last seen
}

// resyncExpired fires when the resync being received is overdue.
func (s *importSession) resyncExpired() <-chan time.Time {
	if s.resyncTimer == nil {
		return nil
	}
	return s.resyncTimer.C
}

func (s *importSession) stopResyncTimer() {
	if s.resyncTimer != nil {
		s.resyncTimer.Stop()
		s.resyncTimer = nil
	}
}

// maxResyncWire bounds the messages of one resync: twice the bytes quota
// (room for the encoding and deletions), or 256 MiB without one.
func (s *importSession) maxResyncWire() int {
	if b := s.Limits.maxBytes(); b > 0 {
		return int(min(2*b, 1<<40))
	}
	return maxResyncBytes
}

// session runs one stream; progressed reports whether anything was
// committed from it.
func (im *Importer) session(ctx context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := im.Connect(ctx)
	if err != nil {
		return false, err
	}
	if err := stream.Send(&apipb.ReplicateRequest{Msg: &apipb.ReplicateRequest_Hello{Hello: &apipb.ReplicationHello{Site: im.Site}}}); err != nil {
		return false, err
	}
	events := make(chan received, 64)
	go func() {
		for {
			ev, err := stream.Recv()
			select {
			case events <- received{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	s := &importSession{Importer: im, stream: stream, pending: &Batch{Peer: im.Peer}}
	defer s.stopResyncTimer()
	deadline := 3 * im.Heartbeat
	idle := time.NewTimer(deadline)
	defer idle.Stop()
	connected := false
	for {
		var r received
		select {
		case <-ctx.Done():
			return s.progressed, ctx.Err()
		case <-idle.C:
			return s.progressed, fmt.Errorf("nothing heard from the peer for %s", deadline)
		case <-s.resyncExpired():
			return s.progressed, &RefusedError{Peer: im.Peer, Reason: RefusedResyncTimeout,
				Err: fmt.Errorf("the peer's full catalog did not arrive within %s", im.ResyncTimeout)}
		case r = <-events:
		}
		idle.Reset(deadline)
		if r.err == nil {
			im.Stats.heardAt(time.Now())
		}
		if !connected && r.err == nil {
			connected = true
			im.Stats.setConnected(true, nil)
			im.Logger.Info("replication stream from peer up", "peer", im.Peer)
		}
		// Take what else has already arrived into the same commit.
		for {
			if r.err != nil {
				return s.progressed, r.err
			}
			if err := s.take(ctx, r.ev); err != nil {
				return s.progressed, err
			}
			if len(s.pending.Changes) >= im.MaxBatch {
				break
			}
			select {
			case r = <-events:
				continue
			default:
			}
			break
		}
		if err := s.commit(ctx, false); err != nil {
			return s.progressed, err
		}
	}
}

// take folds one event into the pending batch (or the resync being
// received), after checking it.
func (s *importSession) take(ctx context.Context, ev *apipb.ReplicationEvent) error {
	if ev.Gateways != nil {
		// Our gateways and leader dial these: a peer must not point them
		// at this site's own services, or bloat the state with them.
		if err := peeraddr.CheckList(ev.Gateways.Addresses, s.AllowLoopbackGateways); err != nil {
			return fmt.Errorf("peer announced invalid gateways (%v); dropping the stream", err)
		}
	}
	for _, c := range ev.Changes {
		if err := s.Validate(c); err != nil {
			return fmt.Errorf("peer sent an invalid change (%v); dropping the stream", err)
		}
	}
	if len(ev.Bundle) > 0 {
		if err := s.Bundle(ctx, ev.Bundle); err != nil {
			s.Logger.Warn("bundle from the replication stream not stored", "peer", s.Peer, "err", err)
		}
	}
	if ev.Resync {
		if s.inResync {
			return errors.New("peer restarted a resync before finishing the previous one")
		}
		// Deltas received before a resync are superseded by it.
		s.inResync = true
		s.resyncWire, s.resyncServices, s.resyncInsts, s.resyncBytes = 0, 0, 0, 0
		s.resync = &Batch{Peer: s.Peer, Resync: true, Gateways: &apipb.GatewaySet{}}
		s.resyncTimer = time.NewTimer(s.ResyncTimeout)
	}
	if s.inResync {
		if err := s.countResync(ev); err != nil {
			s.resync = nil // free what was buffered
			return err
		}
		s.resync.Changes = append(s.resync.Changes, ev.Changes...)
		if ev.Gateways != nil {
			s.resync.Gateways = ev.Gateways
		}
		if !ev.Synced {
			return nil
		}
		s.stopResyncTimer()
		s.inResync = false
		s.resync.Version = ev.Version
		s.pending, s.resync = s.resync, nil
		return s.commit(ctx, true)
	}
	if ev.Synced {
		return errors.New("peer ended a resync it never started")
	}
	s.pending.Changes = append(s.pending.Changes, ev.Changes...)
	if ev.Gateways != nil {
		s.pending.Gateways = ev.Gateways
	}
	s.pending.Version = max(s.pending.Version, ev.Version)
	return nil
}

// countResync adds ev to what the resync being received holds, and refuses
// it as soon as that is over a quota or over the bound on its messages.
func (s *importSession) countResync(ev *apipb.ReplicationEvent) error {
	if s.resyncWire += proto.Size(ev); s.resyncWire > s.maxResyncWire() {
		return &RefusedError{Peer: s.Peer, Reason: RefusedResyncBytes,
			Err: fmt.Errorf("the peer's full catalog exceeds %d bytes on the wire (twice peer_max_import_bytes)", s.maxResyncWire())}
	}
	for _, c := range ev.Changes {
		switch c.Change.(type) {
		case *apipb.Change_Service:
			s.resyncServices++
		case *apipb.Change_Instance:
			s.resyncInsts++
		}
		s.resyncBytes += uint64(s.size(c))
	}
	var lim Limits
	if s.Limits != nil {
		lim = *s.Limits
	}
	for _, q := range []struct {
		name         string
		limit, would uint64
	}{
		{QuotaServices, uint64(lim.MaxServices), s.resyncServices},
		{QuotaInstances, uint64(lim.MaxInstances), s.resyncInsts},
		{QuotaBytes, lim.MaxBytes, s.resyncBytes},
	} {
		if q.limit > 0 && q.would > q.limit {
			return &RefusedError{Peer: s.Peer, Reason: q.name,
				Err: fmt.Errorf("imports from peer %q would hold %d %s, over the quota of %d", s.Peer, q.would, q.name, q.limit)}
		}
	}
	return nil
}

// size is what c counts towards the bytes quota.
func (s *importSession) size(c *apipb.Change) int64 {
	if s.Size != nil {
		return s.Size(c)
	}
	switch x := c.GetChange().(type) {
	case *apipb.Change_Service:
		return int64(proto.Size(x.Service))
	case *apipb.Change_Instance:
		return int64(proto.Size(x.Instance))
	}
	return 0
}

// commit applies the pending batch when it carries anything, or when
// contact has not been recorded for a while, then acknowledges it.
func (s *importSession) commit(ctx context.Context, force bool) error {
	b := s.pending
	if s.inResync && !force {
		return nil // only the resync, when complete, commits
	}
	hasData := b.Resync || len(b.Changes) > 0 || b.Gateways != nil
	if !hasData && !force && time.Since(s.lastCommit) < s.ContactEvery {
		return s.ack(b.Version)
	}
	b.Limits = s.Limits
	if err := s.Apply(ctx, b); err != nil {
		if qe := quotaExceeded(nil); errors.As(err, &qe) {
			return &RefusedError{Peer: s.Peer, Reason: qe.ExceededQuota(), Err: qe}
		}
		return err
	}
	s.lastCommit = time.Now()
	s.progressed = true
	s.Stats.applied(len(b.Changes))
	s.checkVIPs()
	s.pending = &Batch{Peer: s.Peer, Version: b.Version}
	return s.ack(b.Version)
}

// checkVIPs reports services of the peer's imports that have no virtual
// IP, when their number has grown.
func (s *importSession) checkVIPs() {
	if s.WithoutVIP == nil {
		return
	}
	n := s.WithoutVIP()
	s.Stats.setWithoutVIP(n)
	if n > s.withoutVIP {
		s.Logger.Warn("services imported without a virtual IP: mesh DNS and gateways do not serve them until one is free",
			"peer", s.Peer, "services", n, "hint", "the peer is at its share of virtual_ip_cidr, or the range is full; a larger range helps")
	}
	s.withoutVIP = n
}

func (s *importSession) ack(v uint64) error {
	if v == 0 || v <= s.acked {
		return nil
	}
	s.acked = v
	return s.stream.Send(&apipb.ReplicateRequest{Msg: &apipb.ReplicateRequest_Ack{Ack: &apipb.ReplicationAck{Version: v}}})
}
