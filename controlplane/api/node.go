package api

import (
	"context"
	"errors"
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

// Errors a Node returns; status.go maps them to Unavailable.
var (
	ErrNotLeader = errors.New("this server is not the leader")
	ErrNoLeader  = errors.New("the site has no leader right now (an election may be in progress); retry shortly")
)

// Node is what the API needs from the server's Raft node.
type Node interface {
	// Store is the local replica.
	Store() *state.Store
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
	// Heartbeat records a heartbeat of a TTL instance (leader only).
	Heartbeat(ctx context.Context, k *apipb.InstanceKey) error
	// Status describes this server.
	Status() *apipb.StatusResponse
	// ProbeServers asks every server of the Raft configuration for its
	// status, a bounded time each; one that does not answer is unreachable.
	ProbeServers(ctx context.Context) []*apipb.ServerHealth
	// Peers lists the Raft configuration.
	Peers() ([]*apipb.RaftPeer, error)
	// RemovePeer removes a server from the Raft configuration (leader only).
	RemovePeer(ctx context.Context, id string) error
	// Join admits a new server whose token was consumed (leader only).
	Join(ctx context.Context, req *apipb.JoinRequest) (*apipb.JoinResponse, error)
	// Promote makes a caught-up non-voter a voter (leader only).
	Promote(ctx context.Context, node string, applied uint64) error
	// Leave removes a server at its own request (leader only).
	Leave(ctx context.Context, node string) error
	// OwnBundle is the site's SPIFFE bundle.
	OwnBundle() (*spiffebundle.Bundle, error)
	// CreateInvite issues a federation token (leader only).
	CreateInvite(ctx context.Context, peer string, ttl time.Duration) (*apipb.CreateInviteResponse, error)
	// JoinFederation redeems another site's federation token (leader only).
	JoinFederation(ctx context.Context, token, name string) (*statepb.ForeignBundle, error)
	// NotifyUnpeer tells a removed peer's servers, authenticating with this
	// server's SVID.
	NotifyUnpeer(ctx context.Context, f *statepb.ForeignBundle) error
	// PeerIntention asks the peer's servers for their decision on a
	// connection from this site to their service ns/svc.
	PeerIntention(ctx context.Context, f *statepb.ForeignBundle, ns, svc string) (*apipb.CheckIntentionResponse, error)
	// FetchForeign fetches a foreign bundle from its endpoint.
	FetchForeign(ctx context.Context, f *statepb.ForeignBundle) (*spiffebundle.Bundle, error)
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
