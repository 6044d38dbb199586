package api

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/federation/peering"
	"github.com/straitmesh/strait/federation/replication"
)

// Peering is what the API needs of the site's peerings (implemented by
// federation/peering's Manager): the Federation service's invites, joins,
// unpeering and replication streams, the Bundle service's fetches and the
// Intentions service's questions to peers.
type Peering interface {
	// CreateInvite issues a federation token (leader only).
	CreateInvite(ctx context.Context, peer string, ttl time.Duration) (*apipb.CreateInviteResponse, error)
	// Join redeems another site's federation token (leader only).
	Join(ctx context.Context, token, name string) (*statepb.ForeignBundle, error)
	// Accept records the peering of a joining site that presented secret,
	// consuming its invite, and returns the peer's name (leader only).
	Accept(ctx context.Context, secret string, req *apipb.AcceptRequest) (string, error)
	// NotifyUnpeer tells a removed peer's servers, authenticating with this
	// server's SVID.
	NotifyUnpeer(ctx context.Context, f *statepb.ForeignBundle) error
	// CheckIntention asks the peer's servers for their decision on a
	// connection from this site to their service ns/svc.
	CheckIntention(ctx context.Context, f *statepb.ForeignBundle, ns, svc string) (*apipb.CheckIntentionResponse, error)
	// FetchForeign fetches a foreign bundle from its endpoint.
	FetchForeign(ctx context.Context, f *statepb.ForeignBundle) (*spiffebundle.Bundle, error)
	// ServeExport runs the replication stream of the peer with trust
	// domain peerTD (leader only).
	ServeExport(ctx context.Context, peerTD string, stream replication.Stream) error
	// Replication is the runtime state of replication streams.
	Replication() *replication.Registry
	// StaleAfter is how long imports are served without contact before
	// they are marked stale.
	StaleAfter() time.Duration
}

var _ Peering = (*peering.Manager)(nil)

// peeringStatus maps the errors of federation/peering to status codes
// (for toStatus); ok is false for any other error.
func peeringStatus(err error) (st error, ok bool) {
	var te *peering.TokenError
	code := codes.OK
	switch {
	case errors.As(err, &te):
		return toStatus(&FieldError{Field: "token", Rule: te.Rule}), true
	case errors.Is(err, peering.ErrNotLeader):
		return retryable(err.Error()), true
	case errors.Is(err, peering.ErrLeadershipMoved), errors.Is(err, peering.ErrPeerUnreachable):
		code = codes.Unavailable
	case errors.Is(err, peering.ErrNoBundleEndpoint), errors.Is(err, peering.ErrIssuerUnreachable):
		code = codes.FailedPrecondition
	case errors.Is(err, peering.ErrOwnSite):
		code = codes.InvalidArgument
	case errors.Is(err, peering.ErrPeerExists):
		code = codes.AlreadyExists
	case errors.Is(err, peering.ErrDenied):
		code = codes.PermissionDenied
	case errors.Is(err, peering.ErrTooManyStreams):
		code = codes.ResourceExhausted
	default:
		return nil, false
	}
	return status.Error(code, err.Error()), true
}
