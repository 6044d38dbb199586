package api

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"google.golang.org/grpc"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
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
	// TokenPin is the suffix server and agent tokens carry to pin the site CA.
	TokenPin() string
	// SignSVID issues an X.509-SVID for id over the key in a PKCS#10 CSR,
	// waiting for the signing rate limit (ctx bounds the wait).
	SignSVID(ctx context.Context, id spiffeid.ID, csr []byte, ttl time.Duration) (*x509.Certificate, error)
	// Authorities are the site's X.509 CA certificates.
	Authorities() ([]*x509.Certificate, error)
	// WorkloadSVIDTTL is the default lifetime of workload SVIDs.
	WorkloadSVIDTTL() time.Duration
	// SignJWT issues a JWT-SVID for id and audience, valid for ttl.
	SignJWT(ctx context.Context, id spiffeid.ID, audience []string, ttl time.Duration) (string, error)
	// JWTAuthorities are the site's JWT public keys by key ID.
	JWTAuthorities() (map[string]crypto.PublicKey, error)
	// RotateCA prepares a new CA root (leader only).
	RotateCA(ctx context.Context) (*apipb.CARootStatus, error)
	// CAStatus lists the site's roots and their phases.
	CAStatus() (*apipb.CAStatusResponse, error)
	// OwnBundle is the site's SPIFFE bundle.
	OwnBundle() (*spiffebundle.Bundle, error)
}

func secondsDuration(s int64) time.Duration { return time.Duration(s) * time.Second }
