package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
)

// Raft settings tuned for a 3- or 5-server site. Throughput comes from
// batching: concurrent Applies are grouped into one log append and one fsync
// (BatchApplyCh, MaxAppendEntries), and the FSM applies a batch under one lock.
const (
	raftMaxAppendEntries  = 1024
	raftSnapshotThreshold = 16384
	raftSnapshotInterval  = 2 * time.Minute
	raftTrailingLogs      = 10240
	raftSnapshotsRetained = 2
	raftApplyTimeout      = 10 * time.Second
)

// raftNode is this server's Raft node: it commits commands, says who
// leads, makes reads linearizable, reaches the leader, and changes the
// Raft configuration (join, promote, leave, remove). It is the narrow
// surface the rest of the server uses for consensus; the replicated
// state itself is the store it applies to.
//
// Goroutines: Raft runs its own (see hashicorp/raft); the node runs
// leadership (the leader-task runner, see leaderRunner) and promoteLoop
// as tasks of the server's errgroup.
type raftNode struct {
	raft      *raft.Raft // set by start
	store     *state.Store
	self      raft.ServerID
	log       *slog.Logger
	now       func() time.Time
	heartbeat time.Duration // Raft's; a follower is fresh within 3 of them
	applyTime prometheus.Histogram
	creds     func() credentials.TransportCredentials // this server's client mTLS
	leaders   *leaderRunner

	readyTerm atomic.Uint64 // see ConsistentRead
	conns     connPool
	// status describes this server (ProbeServers answers for itself with it).
	status func() *apipb.StatusResponse
}

// raftStorage says where and how a raftNode keeps its log.
type raftStorage struct {
	cfg       *Config
	layer     raft.StreamLayer
	advertise string
	bootstrap bool // bootstrap a one-server configuration when there is no state
}

func (n *raftNode) config(c *Config) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = n.self
	rc.Logger = newHclog(n.log, "raft")
	rc.HeartbeatTimeout = c.Raft.Heartbeat
	rc.ElectionTimeout = c.Raft.Election
	rc.LeaderLeaseTimeout = c.Raft.LeaderLease
	rc.CommitTimeout = c.Raft.CommitTimeout
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = raftMaxAppendEntries
	rc.SnapshotThreshold = raftSnapshotThreshold
	rc.SnapshotInterval = raftSnapshotInterval
	rc.TrailingLogs = raftTrailingLogs
	return rc
}

// start opens the log and starts Raft. closers are to be called, last
// first, after Raft has shut down, even when start fails.
func (n *raftNode) start(st raftStorage) (closers []func() error, err error) {
	conf := n.config(st.cfg)
	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	if st.cfg.Dev || st.cfg.InMemoryRaft {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		dir := filepath.Join(st.cfg.DataDir, "raft")
		walDir := filepath.Join(dir, "wal")
		if err := os.MkdirAll(walDir, 0o700); err != nil {
			return nil, err
		}
		// raft-wal, not raft-boltdb: measured 1.3x the write throughput and
		// a third of the latency on 3 servers (BENCHMARKS.md): one fsync per
		// append batch into append-only segments, no B-tree or freelist.
		// WAL.Close (v0.4.0) leaves its meta store open, and with it a
		// file lock; we own the meta store and close it after the WAL.
		meta := &metadb.BoltMetaDB{}
		closers = append(closers, meta.Close)
		log, err := wal.Open(walDir, wal.WithMetaStore(meta), wal.WithLogger(newHclog(n.log, "raft-wal")))
		if err != nil {
			return closers, fmt.Errorf("open raft log: %w", err)
		}
		closers = append(closers, log.Close)
		fs, err := raft.NewFileSnapshotStoreWithLogger(dir, raftSnapshotsRetained, newHclog(n.log, "raft-snapshot"))
		if err != nil {
			return closers, fmt.Errorf("open raft snapshots: %w", err)
		}
		logs, stable, snaps = log, log, fs
	}
	var trans raft.Transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  st.layer,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  newHclog(n.log, "raft-net"),
	})
	if st.cfg.WrapTransport != nil {
		trans = st.cfg.WrapTransport(trans)
	}
	if st.bootstrap {
		has, err := raft.HasExistingState(logs, stable, snaps)
		if err != nil {
			return closers, err
		}
		if !has {
			cfg := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: conf.LocalID, Address: raft.ServerAddress(st.advertise)}}}
			if err := raft.BootstrapCluster(conf, logs, stable, snaps, trans, cfg); err != nil {
				return closers, fmt.Errorf("bootstrap raft: %w", err)
			}
		}
	}
	r, err := raft.NewRaft(conf, &state.FSM{Store: n.store}, logs, stable, snaps, trans)
	if err != nil {
		return closers, fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	return closers, nil
}

// leadership runs the leader tasks while this node leads, until ctx ends.
func (n *raftNode) leadership(ctx context.Context) error {
	return n.leaders.Run(ctx, n.IsLeader, n.raft.LeaderCh())
}

// waitBarrier is the first prepare step of every term: entries of earlier
// terms may be committed but not yet applied here; a barrier makes the
// FSM current before consistent reads are served (ConsistentRead would do
// it on the first read otherwise).
func (n *raftNode) waitBarrier(ctx context.Context) error {
	for {
		if err := n.barrier(n.raft.CurrentTerm()); err == nil {
			return nil
		} else if !n.IsLeader() {
			return errNotLeading
		}
		select {
		case <-ctx.Done():
			return errNotLeading
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// promoteLoop asks the leader to make this server a voter once it has
// applied the log up to joinIndex, the index at which it joined (zero
// for the server that bootstrapped the site: it votes already).
func (n *raftNode) promoteLoop(ctx context.Context, joinIndex uint64) error {
	for {
		if n.isVoter() {
			return nil
		}
		if n.raft.AppliedIndex() >= joinIndex && joinIndex > 0 {
			err := n.callLeader(ctx, func(ctx context.Context, c apipb.ClusterClient) error {
				_, err := c.Promote(ctx, &apipb.PromoteRequest{AppliedIndex: n.raft.AppliedIndex()})
				return err
			})
			if err == nil {
				n.log.Info("promoted to voter")
				return nil
			}
			n.log.Debug("promotion not yet possible", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (n *raftNode) isVoter() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if srv.ID == n.self {
			return srv.Suffrage == raft.Voter
		}
	}
	return false
}

// callLeader calls the leader's Cluster service with this server's SVID.
func (n *raftNode) callLeader(ctx context.Context, call func(context.Context, apipb.ClusterClient) error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := n.LeaderConn(ctx)
	if err != nil {
		return err
	}
	return call(ctx, apipb.NewClusterClient(conn))
}

// leave removes this server from the configuration, handing leadership
// over first if it leads.
func (n *raftNode) leave(ctx context.Context) error {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	if len(f.Configuration().Servers) <= 1 {
		return nil
	}
	if n.IsLeader() {
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			return fmt.Errorf("transfer leadership: %w", err)
		}
	}
	err := n.callLeader(ctx, func(ctx context.Context, c apipb.ClusterClient) error {
		_, err := c.Leave(ctx, &apipb.LeaveRequest{})
		return err
	})
	if err != nil {
		return err
	}
	n.log.Info("left the site's raft configuration")
	return nil
}

// stop stops Raft.
func (n *raftNode) stop() {
	if err := n.raft.Shutdown().Error(); err != nil {
		n.log.Warn("raft shutdown", "err", err)
	}
}
