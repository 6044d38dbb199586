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
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// ErrPeerGone is what Apply returns once the peering no longer exists; the
// importer then stops for good.
var ErrPeerGone = errors.New("peering removed")

// Defaults of an Importer.
const (
	DefaultContactEvery = 15 * time.Second
	DefaultMaxBatch     = 5000
	// A resync larger than this is refused (about 1M instances).
	maxResyncBytes = 256 << 20
	minBackoff     = 200 * time.Millisecond
	maxBackoff     = 5 * time.Second
)

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
	Apply func(ctx context.Context, b *statepb.ImportBatch) error
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
	Logger     *slog.Logger
	Stats      *ImportStats
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
		// The first failure in a row is worth a warning; the rest of an
		// outage repeats it at debug level.
		lvl := slog.LevelDebug
		if failures == 1 {
			lvl = slog.LevelWarn
		}
		im.Logger.Log(ctx, lvl, "replication stream from peer ended; reconnecting", "peer", im.Peer, "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
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
	stream      ClientStream
	pending     *statepb.ImportBatch
	inResync    bool
	resync      *statepb.ImportBatch
	resyncBytes int
	acked       uint64
	lastCommit  time.Time
	progressed  bool
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
	s := &importSession{Importer: im, stream: stream, pending: &statepb.ImportBatch{Peer: im.Peer}}
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
		s.inResync, s.resyncBytes = true, 0
		s.resync = &statepb.ImportBatch{Peer: s.Peer, Resync: true, Gateways: &apipb.GatewaySet{}}
	}
	if s.inResync {
		s.resync.Changes = append(s.resync.Changes, ev.Changes...)
		if ev.Gateways != nil {
			s.resync.Gateways = ev.Gateways
		}
		if s.resyncBytes += proto.Size(ev); s.resyncBytes > maxResyncBytes {
			return fmt.Errorf("peer's full export exceeds %d MiB", maxResyncBytes>>20)
		}
		if !ev.Synced {
			return nil
		}
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
	if err := s.Apply(ctx, b); err != nil {
		return err
	}
	s.lastCommit = time.Now()
	s.progressed = true
	s.Stats.applied(len(b.Changes))
	s.pending = &statepb.ImportBatch{Peer: s.Peer, Version: b.Version}
	return s.ack(b.Version)
}

func (s *importSession) ack(v uint64) error {
	if v == 0 || v <= s.acked {
		return nil
	}
	s.acked = v
	return s.stream.Send(&apipb.ReplicateRequest{Msg: &apipb.ReplicateRequest_Ack{Ack: &apipb.ReplicationAck{Version: v}}})
}
