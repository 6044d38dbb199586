package peering

import (
	"errors"
	"fmt"
)

// Errors the Manager returns. The API (controlplane/api) maps each to a
// gRPC status; a refusal's text says what was wrong and what to do, and
// errors.Is matches it against one of the kinds below.
var (
	// ErrNoBundleEndpoint: this site has no bundle endpoint, so it cannot
	// federate (FailedPrecondition).
	ErrNoBundleEndpoint = errors.New("federation needs this site's bundle endpoint: set bundle_endpoint_addr (--bundle-addr) on the servers")
	// ErrNotLeader: a leader-only call reached a server that does not lead,
	// or not yet (Unavailable, safe to retry).
	ErrNotLeader = errors.New("this server is not the leader")
	// ErrLeadershipMoved: the leadership a replication stream was served
	// under ended (Unavailable).
	ErrLeadershipMoved = errors.New("leadership moved; reconnect")

	// ErrOwnSite: the request names this site itself (InvalidArgument).
	ErrOwnSite = errors.New("names this site")
	// ErrPeerExists: the name or trust domain is federated already
	// (AlreadyExists).
	ErrPeerExists = errors.New("peer exists")
	// ErrDenied: the caller may not do this: an invite that is not valid
	// here, a name the invite was not issued for, a trust domain that is
	// not a peer (PermissionDenied).
	ErrDenied = errors.New("denied")
	// ErrIssuerUnreachable: the site that issued a token refused the join
	// or could not be reached (FailedPrecondition).
	ErrIssuerUnreachable = errors.New("issuer unreachable")
	// ErrPeerUnreachable: none of a peer's servers answered
	// (Unavailable).
	ErrPeerUnreachable = errors.New("peer unreachable")
	// ErrTooManyStreams: a peer holds peer_max_streams replication
	// streams open already (ResourceExhausted).
	ErrTooManyStreams = errors.New("too many replication streams")
)

// TokenError is a federation token that cannot be used: unreadable,
// expired, badly signed, or announcing addresses a peer may not.
type TokenError struct {
	// Rule is what is wrong with it.
	Rule string
}

func (e *TokenError) Error() string { return "token: " + e.Rule }

// refusal is an error of one of the kinds above, with its own text.
type refusal struct {
	kind error
	msg  string
}

func (r *refusal) Error() string { return r.msg }
func (r *refusal) Unwrap() error { return r.kind }

// refuse returns an error of kind whose text is the formatted message
// (formatted with %v semantics: the kind alone is matched by errors.Is,
// not the arguments).
func refuse(kind error, format string, args ...any) error {
	return &refusal{kind: kind, msg: fmt.Sprintf(format, args...)}
}
