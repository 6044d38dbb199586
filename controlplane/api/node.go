package api

import (
	"context"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
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
}

func secondsDuration(s int64) time.Duration { return time.Duration(s) * time.Second }
