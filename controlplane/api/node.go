package api

import (
	"context"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/replication"
	"github.com/straitmesh/strait/trust"
)

// What each service needs of the server, one small interface per service
// (package controlplane implements them). Every service also reads the
// local replica (Config.Store) and reaches the leader through Raft.

// Raft is the Raft node as every service uses it: whether this server
// leads, the way to the leader (writes and consistent reads on a
// follower are forwarded there), committing a command, and making a read
// of the local store linearizable.
type Raft interface {
	// IsLeader reports whether this server leads.
	IsLeader() bool
	// LeaderConn returns a connection to the current leader, waiting a
	// bounded time for one to be elected. ErrNoLeader when there is none.
	LeaderConn(ctx context.Context) (*grpc.ClientConn, error)
	// Apply commits cmd through Raft (leader only; ErrNotLeader otherwise)
	// and returns the command's result and log index.
	Apply(ctx context.Context, cmd *statepb.Command) (any, uint64, error)
	// ConsistentRead returns nil once a read of the local store is
	// linearizable (leader only).
	ConsistentRead(ctx context.Context) error
}

// Catalog is what the Catalog service needs beyond the store and Raft.
type Catalog interface {
	// Heartbeat records a heartbeat of a TTL instance (leader only).
	Heartbeat(ctx context.Context, k *apipb.InstanceKey) error
}

// Operator is what the Operator service needs beyond the store and Raft.
type Operator interface {
	// Status describes this server.
	Status() *apipb.StatusResponse
	// ProbeServers asks every server of the Raft configuration for its
	// status, a bounded time each; one that does not answer is unreachable.
	ProbeServers(ctx context.Context) []*apipb.ServerHealth
	// Peers lists the Raft configuration.
	Peers() ([]*apipb.RaftPeer, error)
	// RemovePeer removes a server from the Raft configuration (leader only).
	RemovePeer(ctx context.Context, id string) error
}

// Cluster is what the Cluster service (server membership) needs beyond
// the store and Raft.
type Cluster interface {
	// Status describes this server.
	Status() *apipb.StatusResponse
	// Join admits a new server whose token was consumed (leader only).
	Join(ctx context.Context, req *apipb.JoinRequest) (*apipb.JoinResponse, error)
	// Promote makes a caught-up non-voter a voter (leader only).
	Promote(ctx context.Context, node string, applied uint64) error
	// Leave removes a server at its own request (leader only).
	Leave(ctx context.Context, node string) error
}

// Bundles is what the Bundle service needs beyond the store and Raft.
type Bundles interface {
	// OwnBundle is the site's SPIFFE bundle.
	OwnBundle() (*spiffebundle.Bundle, error)
	// FetchForeign fetches a foreign bundle from its endpoint.
	FetchForeign(ctx context.Context, f *statepb.ForeignBundle) (*spiffebundle.Bundle, error)
}

// Intentions is what the Intentions service needs beyond the store.
type Intentions interface {
	// CheckIntention asks the peer's servers for their decision on a
	// connection from this site to their service ns/svc.
	CheckIntention(ctx context.Context, f *statepb.ForeignBundle, ns, svc string) (*apipb.CheckIntentionResponse, error)
}

// Node is what the handlers of federation.go and replicate.go still
// reach the server through.
type Node interface {
	// Store is the local replica.
	Store() *state.Store
	// IsLeader reports whether this server leads.
	IsLeader() bool
	// LeaderConn returns a connection to the current leader.
	LeaderConn(ctx context.Context) (*grpc.ClientConn, error)
	// Peers lists the Raft configuration.
	Peers() ([]*apipb.RaftPeer, error)
	// OwnBundle is the site's SPIFFE bundle.
	OwnBundle() (*spiffebundle.Bundle, error)
	// CreateInvite issues a federation token (leader only).
	CreateInvite(ctx context.Context, peer string, ttl time.Duration) (*apipb.CreateInviteResponse, error)
	// JoinFederation redeems another site's federation token (leader only).
	JoinFederation(ctx context.Context, token, name string) (*statepb.ForeignBundle, error)
	// NotifyUnpeer tells a removed peer's servers, authenticating with this
	// server's SVID.
	NotifyUnpeer(ctx context.Context, f *statepb.ForeignBundle) error
	// ServeExport runs the replication stream of the peer with trust
	// domain peerTD (leader only).
	ServeExport(ctx context.Context, peerTD string, stream replication.Stream) error
	// Replication is the runtime state of replication streams.
	Replication() *replication.Registry
	// PeerStaleAfter is how long imports are served without contact
	// before they are marked stale.
	PeerStaleAfter() time.Duration
}

func secondsDuration(s int64) time.Duration { return time.Duration(s) * time.Second }

func bundleEndpointID(td spiffeid.TrustDomain) string { return trust.BundleEndpointID(td).String() }
