package peering

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/replication"
	"github.com/straitmesh/strait/trust/bundleendpoint"
)

// Replication between peers (see federation/replication): while this
// server leads, it runs one importer per peering, each pulling what the
// peer exports to this site; and it serves the exporters for the peers'
// importers, whichever of this site's servers they reached.

// maxReplicationMessage bounds one received replication event.
const maxReplicationMessage = 4 << 20

// replicate runs while this server leads.
func (m *Manager) replicate(ctx context.Context) {
	type run struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	running := make(map[[2]string]run) // by peer name and trust domain
	defer func() {
		for _, r := range running {
			r.cancel()
			<-r.done
		}
	}()
	for {
		changed := m.cfg.Store.IdentityChanged()
		want := make(map[[2]string]*statepb.ForeignBundle)
		for _, f := range m.cfg.Store.ForeignBundles() {
			if f.PeerName != "" {
				want[[2]string{f.PeerName, f.TrustDomain}] = f
			}
		}
		for k, r := range running {
			if _, ok := want[k]; !ok {
				r.cancel()
				<-r.done
				delete(running, k)
				m.repl.Forget(k[0])
			}
		}
		for k, f := range want {
			if _, ok := running[k]; ok {
				continue
			}
			rctx, cancel := context.WithCancel(ctx)
			r := run{cancel, make(chan struct{})}
			running[k] = r
			im := m.importer(f)
			go func() { defer close(r.done); im.Run(rctx) }()
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// importer builds the importer of one peer.
func (m *Manager) importer(f *statepb.ForeignBundle) *replication.Importer {
	peer, td := f.PeerName, f.TrustDomain
	var (
		mu   sync.Mutex
		next int
	)
	return &replication.Importer{
		Peer: peer, Site: m.cfg.Site,
		Heartbeat: m.cfg.Heartbeat, ContactEvery: max(m.cfg.StaleAfter/4, m.cfg.Heartbeat),
		Logger: m.log, Stats: m.repl.Import(peer),
		Validate: m.cfg.ValidateImport,
		Limits: &replication.Limits{
			MaxServices: uint32(m.cfg.MaxServices), MaxInstances: uint32(m.cfg.MaxInstances),
			MaxBytes: uint64(m.cfg.MaxImportBytes),
		},
		ResyncTimeout:         m.cfg.ResyncTimeout,
		AllowLoopbackGateways: m.onLoopback(),
		WithoutVIP:            func() int { return m.cfg.Imports.ImportsWithoutVIP(peer) },
		Size:                  m.cfg.Imports.ImportedSize,
		Connect: func(ctx context.Context) (replication.ClientStream, error) {
			cur, ok := m.cfg.Store.ForeignBundle(td)
			if !ok || cur.PeerName != peer {
				return nil, replication.ErrPeerGone
			}
			targets := m.peerTargets(cur)
			if len(targets) == 0 {
				return nil, errors.New("no address known for the peer")
			}
			mu.Lock()
			t := targets[next%len(targets)]
			next++ // the next attempt tries the next way in
			mu.Unlock()
			conn, err := m.peerConn(cur, t)
			if err != nil {
				return nil, err
			}
			context.AfterFunc(ctx, func() { conn.Close() })
			stream, err := apipb.NewFederationClient(conn).Replicate(ctx, grpc.MaxCallRecvMsgSize(maxReplicationMessage))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", t, err)
			}
			return stream, nil
		},
		Apply:  m.cfg.Imports.CommitImport,
		Bundle: func(ctx context.Context, doc []byte) error { return m.storePeerBundle(ctx, td, doc) },
	}
}

// storePeerBundle records a bundle a peer sent over replication, when it
// is newer than the stored one.
func (m *Manager) storePeerBundle(ctx context.Context, td string, doc []byte) error {
	id, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return err
	}
	b, err := bundleendpoint.Parse(id, doc)
	if err != nil {
		return err
	}
	seq, _ := b.SequenceNumber()
	cur, ok := m.cfg.Store.ForeignBundle(td)
	if !ok {
		return replication.ErrPeerGone
	}
	if bytes.Equal(cur.Bundle, doc) || seq < cur.Sequence {
		return nil
	}
	n := proto.Clone(cur).(*statepb.ForeignBundle)
	n.Bundle, n.Sequence, n.LastSuccess, n.LastError = doc, seq, timestamppb.New(m.cfg.Now()), ""
	_, _, err = m.cfg.Consensus.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: n}})
	if err == nil {
		m.log.Info("peer bundle updated from replication", "trust_domain", td, "sequence", seq)
	}
	return err
}

// ServeExport runs the exporter for the replication stream of the peer
// with trust domain peerTD until the stream ends or this server stops
// leading (ErrLeadershipMoved). ErrNotLeader unless RunLeader runs.
func (m *Manager) ServeExport(ctx context.Context, peerTD string, stream replication.Stream) error {
	lctx := m.leading.Load()
	if lctx == nil {
		return ErrNotLeader
	}
	f, ok := m.cfg.Store.ForeignBundle(peerTD)
	if !ok || f.PeerName == "" {
		return refuse(ErrDenied, "%s is not a peer of this site", peerTD)
	}
	stats := m.repl.Export(f.PeerName)
	release, err := stats.Open(m.cfg.MaxStreams)
	if err != nil {
		m.log.Warn("replication stream from peer refused", "peer", f.PeerName, "err", err, "max", m.cfg.MaxStreams)
		return refuse(ErrTooManyStreams, "peer %s already has %d replication streams open to this site (peer_max_streams); close one before opening another", f.PeerName, m.cfg.MaxStreams)
	}
	defer release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(*lctx, cancel)()
	e := &replication.Exporter{
		Store: m.cfg.Exports, Peer: f.PeerName, TrustDomain: peerTD, Heartbeat: m.cfg.Heartbeat,
		Logger: m.log, Stats: stats, Bundle: m.cfg.Identity.BundleDoc,
	}
	err = e.Serve(ctx, stream)
	if (*lctx).Err() != nil {
		return ErrLeadershipMoved
	}
	return err
}
