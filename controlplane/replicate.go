package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/mux"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/replication"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/bundleendpoint"
	"github.com/straitmesh/strait/trust/mtls"
)

// Replication between peers (see federation/replication): while this
// server leads, it runs one importer per peering, each pulling what the
// peer exports to this site; and it serves the exporters for the peers'
// importers, whichever of this site's servers they reached.

// maxReplicationMessage bounds one received replication event.
const maxReplicationMessage = 4 << 20

// replicate runs while this server leads.
func (s *Server) replicate(ctx context.Context) {
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
		changed := s.store.IdentityChanged()
		want := make(map[[2]string]*statepb.ForeignBundle)
		for _, f := range s.store.ForeignBundles() {
			if f.PeerName != "" {
				want[[2]string{f.PeerName, f.TrustDomain}] = f
			}
		}
		for k, r := range running {
			if _, ok := want[k]; !ok {
				r.cancel()
				<-r.done
				delete(running, k)
				s.repl.Forget(k[0])
			}
		}
		for k, f := range want {
			if _, ok := running[k]; ok {
				continue
			}
			rctx, cancel := context.WithCancel(ctx)
			r := run{cancel, make(chan struct{})}
			running[k] = r
			im := s.importer(f)
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
func (s *Server) importer(f *statepb.ForeignBundle) *replication.Importer {
	peer, td := f.PeerName, f.TrustDomain
	var (
		mu   sync.Mutex
		next int
	)
	return &replication.Importer{
		Peer: peer, Site: s.id.node.Site,
		Heartbeat: s.cfg.PeerHeartbeat, ContactEvery: max(s.cfg.PeerStaleAfter/4, s.cfg.PeerHeartbeat),
		Logger: s.log, Stats: s.repl.Import(peer),
		Validate: api.ValidateImportedChange,
		Limits: &replication.Limits{
			MaxServices: uint32(s.cfg.PeerMaxServices), MaxInstances: uint32(s.cfg.PeerMaxInstances),
			MaxBytes: uint64(s.cfg.PeerMaxImportBytes),
		},
		ResyncTimeout:         s.cfg.PeerResyncTimeout,
		AllowLoopbackGateways: s.onLoopback(),
		WithoutVIP:            func() int { return s.store.ImportUsage(peer).WithoutVIP },
		Size:                  state.ImportedSize,
		Connect: func(ctx context.Context) (replication.ClientStream, error) {
			cur, ok := s.store.ForeignBundle(td)
			if !ok || cur.PeerName != peer {
				return nil, replication.ErrPeerGone
			}
			targets := s.peerTargets(cur)
			if len(targets) == 0 {
				return nil, errors.New("no address known for the peer")
			}
			mu.Lock()
			t := targets[next%len(targets)]
			next++ // the next attempt tries the next way in
			mu.Unlock()
			conn, err := s.peerConn(cur, t)
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
		Apply: func(ctx context.Context, rb *replication.Batch) error {
			b := &state.ImportBatch{Peer: rb.Peer, Version: rb.Version, Resync: rb.Resync, Changes: rb.Changes,
				Gateways: rb.Gateways, VirtualIPCIDR: s.cfg.VirtualIPCIDR}
			if l := rb.Limits; l != nil {
				b.Limits = &statepb.ImportLimits{MaxServices: l.MaxServices, MaxInstances: l.MaxInstances, MaxBytes: l.MaxBytes}
			}
			// Refused here, a batch over quota never reaches the log;
			// the state machine checks again, for the batches that do.
			if err := s.store.CheckImport(b); err != nil {
				return err
			}
			_, _, err := s.Apply(ctx, state.ImportCommand(b))
			if errors.Is(err, state.ErrNotFound) {
				return replication.ErrPeerGone
			}
			return err
		},
		Bundle: func(ctx context.Context, doc []byte) error { return s.storePeerBundle(ctx, td, doc) },
	}
}

// storePeerBundle records a bundle a peer sent over replication, when it
// is newer than the stored one.
func (s *Server) storePeerBundle(ctx context.Context, td string, doc []byte) error {
	id, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return err
	}
	b, err := bundleendpoint.Parse(id, doc)
	if err != nil {
		return err
	}
	seq, _ := b.SequenceNumber()
	cur, ok := s.store.ForeignBundle(td)
	if !ok {
		return replication.ErrPeerGone
	}
	if bytes.Equal(cur.Bundle, doc) || seq < cur.Sequence {
		return nil
	}
	n := proto.Clone(cur).(*statepb.ForeignBundle)
	n.Bundle, n.Sequence, n.LastSuccess, n.LastError = doc, seq, timestamppb.New(s.cfg.Now()), ""
	_, _, err = s.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: n}})
	if err == nil {
		s.log.Info("peer bundle updated from replication", "trust_domain", td, "sequence", seq)
	}
	return err
}

// peerCreds are the TLS credentials for calling a peer's servers: this
// server's SVID, and the peer's servers verified against its bundle; sni,
// when set, routes the connection through a gateway.
func (s *Server) peerCreds(f *statepb.ForeignBundle, sni string) (credentials.TransportCredentials, error) {
	td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
	if err != nil {
		return nil, err
	}
	b, err := bundleendpoint.Parse(td, f.Bundle)
	if err != nil {
		return nil, err
	}
	ident := mtls.NewIdentity(b.X509Bundle(), s.cfg.Now)
	sv := s.ident.SVID()
	if err := ident.SetSVID(sv.Certificates, sv.PrivateKey); err != nil {
		return nil, err
	}
	authorize := func(id spiffeid.ID) error {
		if !trust.IsServer(id, td) {
			return fmt.Errorf("%s is not a server of %s", id, td)
		}
		return nil
	}
	cfg := mtls.ClientConfig(ident, authorize, mux.ProtoGRPC)
	cfg.ServerName = sni
	return credentials.NewTLS(cfg), nil
}

// peerTarget is a way to a peer's servers: through one of its gateways
// (sni set: the gateway passes the connection through undecrypted) or,
// as a fallback, straight to a server.
type peerTarget struct{ addr, sni string }

func (t peerTarget) String() string {
	if t.sni != "" {
		return t.addr + " (gateway)"
	}
	return t.addr
}

// peerTargets lists the ways to a peer's servers, gateways first: the
// live list from replication, those known at the join, then servers.
func (s *Server) peerTargets(f *statepb.ForeignBundle) []peerTarget {
	var out []peerTarget
	seen := map[string]bool{}
	add := func(addr, sni string) {
		if !seen[addr] {
			seen[addr] = true
			out = append(out, peerTarget{addr, sni})
		}
	}
	sni := meshname.ServersSNI(f.TrustDomain)
	if imp, ok := s.store.PeerImport(f.PeerName); ok {
		for _, a := range imp.Gateways {
			add(a, sni)
		}
	}
	for _, a := range f.PeerGateways {
		add(a, sni)
	}
	for _, a := range f.PeerAddresses {
		add(a, "")
	}
	return out
}

// peerConn returns a new connection to a peer's servers by way of t.
func (s *Server) peerConn(f *statepb.ForeignBundle, t peerTarget) (*grpc.ClientConn, error) {
	if _, _, err := net.SplitHostPort(t.addr); err != nil {
		return nil, err
	}
	creds, err := s.peerCreds(f, t.sni)
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if s.cfg.PeerDialer != nil {
		opts = append(opts, grpc.WithContextDialer(s.cfg.PeerDialer))
	}
	return grpc.NewClient(t.addr, opts...)
}

// ServeExport implements api.Node: it runs the exporter for a peer's
// replication stream until the stream ends or this server stops leading.
func (s *Server) ServeExport(ctx context.Context, peerTD string, stream replication.Stream) error {
	lctx := s.leading.Load()
	if lctx == nil {
		return api.ErrNotLeader
	}
	f, ok := s.store.ForeignBundle(peerTD)
	if !ok || f.PeerName == "" {
		return status.Errorf(codes.PermissionDenied, "%s is not a peer of this site", peerTD)
	}
	stats := s.repl.Export(f.PeerName)
	release, err := stats.Open(s.cfg.PeerMaxStreams)
	if err != nil {
		s.log.Warn("replication stream from peer refused", "peer", f.PeerName, "err", err, "max", s.cfg.PeerMaxStreams)
		return status.Errorf(codes.ResourceExhausted, "peer %s already has %d replication streams open to this site (peer_max_streams); close one before opening another", f.PeerName, s.cfg.PeerMaxStreams)
	}
	defer release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(*lctx, cancel)()
	e := &replication.Exporter{
		Store: s.store, Peer: f.PeerName, TrustDomain: peerTD, Heartbeat: s.cfg.PeerHeartbeat,
		Logger: s.log, Stats: stats, Bundle: s.ownBundleDoc,
	}
	err = e.Serve(ctx, stream)
	if (*lctx).Err() != nil {
		return status.Error(codes.Unavailable, "leadership moved; reconnect")
	}
	return err
}

// ownBundleDoc is the site's bundle document and sequence.
func (s *Server) ownBundleDoc() ([]byte, uint64, error) {
	b, err := s.OwnBundle()
	if err != nil {
		return nil, 0, err
	}
	doc, err := b.Marshal()
	if err != nil {
		return nil, 0, err
	}
	seq, _ := b.SequenceNumber()
	return doc, seq, nil
}

// Replication implements api.Node.
func (s *Server) Replication() *replication.Registry { return s.repl }

// PeerStaleAfter implements api.Node.
func (s *Server) PeerStaleAfter() time.Duration { return s.cfg.PeerStaleAfter }
