package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

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

func (s *Server) raftConfig() *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(s.id.node.NodeID)
	c.Logger = newHclog(s.log, "raft")
	c.HeartbeatTimeout = s.cfg.Raft.Heartbeat
	c.ElectionTimeout = s.cfg.Raft.Election
	c.LeaderLeaseTimeout = s.cfg.Raft.LeaderLease
	c.CommitTimeout = s.cfg.Raft.CommitTimeout
	c.BatchApplyCh = true
	c.MaxAppendEntries = raftMaxAppendEntries
	c.SnapshotThreshold = raftSnapshotThreshold
	c.SnapshotInterval = raftSnapshotInterval
	c.TrailingLogs = raftTrailingLogs
	return c
}

func (s *Server) startRaft() error {
	conf := s.raftConfig()
	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	if s.cfg.Dev || s.cfg.InMemoryRaft {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		dir := filepath.Join(s.cfg.DataDir, "raft")
		walDir := filepath.Join(dir, "wal")
		if err := os.MkdirAll(walDir, 0o700); err != nil {
			return err
		}
		// raft-wal, not raft-boltdb: measured 1.3x the write throughput and
		// a third of the latency on 3 servers (BENCHMARKS.md): one fsync per
		// append batch into append-only segments, no B-tree or freelist.
		// WAL.Close (v0.4.0) leaves its meta store open, and with it a
		// file lock; we own the meta store and close it after the WAL.
		meta := &metadb.BoltMetaDB{}
		s.close = append(s.close, meta.Close)
		log, err := wal.Open(walDir, wal.WithMetaStore(meta), wal.WithLogger(newHclog(s.log, "raft-wal")))
		if err != nil {
			return fmt.Errorf("open raft log: %w", err)
		}
		s.close = append(s.close, log.Close)
		fs, err := raft.NewFileSnapshotStoreWithLogger(dir, raftSnapshotsRetained, newHclog(s.log, "raft-snapshot"))
		if err != nil {
			return fmt.Errorf("open raft snapshots: %w", err)
		}
		logs, stable, snaps = log, log, fs
	}
	var trans raft.Transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  s.mux.RaftLayer(),
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  newHclog(s.log, "raft-net"),
	})
	if s.cfg.WrapTransport != nil {
		trans = s.cfg.WrapTransport(trans)
	}
	if s.id.bootstrap != nil {
		has, err := raft.HasExistingState(logs, stable, snaps)
		if err != nil {
			return err
		}
		if !has {
			cfg := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: conf.LocalID, Address: raft.ServerAddress(s.advertise)}}}
			if err := raft.BootstrapCluster(conf, logs, stable, snaps, trans, cfg); err != nil {
				return fmt.Errorf("bootstrap raft: %w", err)
			}
		}
	}
	r, err := raft.NewRaft(conf, &state.FSM{Store: s.store}, logs, stable, snaps, trans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	s.raft = r
	return nil
}

// leaderLoop reacts to leadership changes. Raft's LeaderCh drops
// notifications when nobody listens, so this loop also re-reads the state.
func (s *Server) leaderLoop(ctx context.Context) error {
	var stopLeading func()
	defer func() {
		if stopLeading != nil {
			stopLeading()
		}
	}()
	obs := s.raft.LeaderCh()
	for {
		isLeader := s.raft.State() == raft.Leader
		switch {
		case isLeader && stopLeading == nil:
			stopLeading = s.startLeading(ctx)
		case !isLeader && stopLeading != nil:
			stopLeading()
			stopLeading = nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-obs:
		case <-time.After(time.Second):
		}
	}
}

// startLeading runs lead until the returned function is called.
func (s *Server) startLeading(ctx context.Context) (stop func()) {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.lead(lctx) }()
	return func() { cancel(); <-done }
}

// lead runs while this server leads.
func (s *Server) lead(ctx context.Context) {
	s.log.Info("leadership gained")
	defer s.log.Info("leadership lost")
	// Entries of earlier terms may be committed but not yet applied here;
	// a barrier makes the FSM current before consistent reads are served
	// (ConsistentRead would do it on the first read otherwise).
	for {
		if err := s.barrier(s.raft.CurrentTerm()); err == nil {
			break
		} else if s.raft.State() != raft.Leader {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	if s.store.Site() == nil && s.id.bootstrap != nil {
		if err := s.bootstrapSite(); err != nil {
			s.log.Error("bootstrap failed", "err", err)
			return
		}
	}
	if err := s.ensureJWTKey(ctx); err != nil {
		s.log.Warn("no jwt signing key", "err", err)
	}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); s.runLeaderTasks(ctx) }()
	go func() { defer wg.Done(); s.rotateLoop(ctx) }()
	go func() { defer wg.Done(); _ = s.peering.RunLeader(ctx) }()
	s.ttl.run(ctx)
	wg.Wait()
}

func (s *Server) bootstrapSite() error {
	cmd, secret, err := s.bootstrapCommand()
	if err != nil {
		return err
	}
	if _, _, err := s.Apply(context.Background(), cmd); err != nil {
		return fmt.Errorf("commit site: %w", err)
	}
	if s.id.persistent {
		if err := dataDir(s.cfg.DataDir).writeNode(&s.id.node); err != nil {
			return err
		}
	}
	s.log.Info("site bootstrapped", "site", s.id.node.Site, "trust_domain", s.id.td.Name())
	if s.cfg.OnBootstrap != nil {
		s.cfg.OnBootstrap(secret)
	}
	return nil
}

// promoteLoop asks the leader to make this server a voter once it has
// applied the log up to the index at which it joined.
func (s *Server) promoteLoop(ctx context.Context) error {
	for {
		if s.isVoter() {
			return nil
		}
		if s.raft.AppliedIndex() >= s.id.node.JoinIndex && s.id.node.JoinIndex > 0 {
			err := s.callLeader(ctx, func(ctx context.Context, c apipb.ClusterClient) error {
				_, err := c.Promote(ctx, &apipb.PromoteRequest{AppliedIndex: s.raft.AppliedIndex()})
				return err
			})
			if err == nil {
				s.log.Info("promoted to voter")
				return nil
			}
			s.log.Debug("promotion not yet possible", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *Server) isVoter() bool {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if srv.ID == raft.ServerID(s.id.node.NodeID) {
			return srv.Suffrage == raft.Voter
		}
	}
	return false
}

// callLeader calls the leader's Cluster service with this server's SVID.
func (s *Server) callLeader(ctx context.Context, call func(context.Context, apipb.ClusterClient) error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := s.LeaderConn(ctx)
	if err != nil {
		return err
	}
	return call(ctx, apipb.NewClusterClient(conn))
}

// leave removes this server from the configuration, handing leadership
// over first if it leads.
func (s *Server) leave(ctx context.Context) error {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	if len(f.Configuration().Servers) <= 1 {
		return nil
	}
	if s.raft.State() == raft.Leader {
		if err := s.raft.LeadershipTransfer().Error(); err != nil {
			return fmt.Errorf("transfer leadership: %w", err)
		}
	}
	err := s.callLeader(ctx, func(ctx context.Context, c apipb.ClusterClient) error {
		_, err := c.Leave(ctx, &apipb.LeaveRequest{})
		return err
	})
	if err != nil {
		return err
	}
	s.log.Info("left the site's raft configuration")
	return nil
}

var errNoSuchPeer = errors.New("no such server in the raft configuration")
