package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/trust/authority"
)

// Errors the server's components return; toStatus maps them to gRPC
// status codes (Unavailable, ResourceExhausted).
var (
	ErrNotLeader = errors.New("this server is not the leader")
	ErrNoLeader  = errors.New("the site has no leader right now (an election may be in progress); retry shortly")
	// ErrOverloaded marks a request refused (or given up on) because a
	// rate or concurrency bound was reached: ResourceExhausted.
	ErrOverloaded = errors.New("over a rate or concurrency bound")
	// ErrUnreachable marks a remote party (a peer site's servers) that did
	// not answer: Unavailable.
	ErrUnreachable = errors.New("unreachable")
	// ErrDenied marks a request the caller may not make, whatever its
	// token: PermissionDenied.
	ErrDenied = errors.New("denied")
	// ErrExists marks a request to create what exists already:
	// AlreadyExists.
	ErrExists = errors.New("already exists")
)

// kindError is an error that says msg and is (errors.Is) kind.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// Overloaded is an ErrOverloaded saying what was over which bound.
func Overloaded(format string, args ...any) error {
	return &kindError{kind: ErrOverloaded, msg: fmt.Sprintf(format, args...)}
}

// Unreachable is an ErrUnreachable saying who did not answer.
func Unreachable(format string, args ...any) error {
	return &kindError{kind: ErrUnreachable, msg: fmt.Sprintf(format, args...)}
}

// denied is an ErrDenied saying why.
func denied(format string, args ...any) error {
	return &kindError{kind: ErrDenied, msg: fmt.Sprintf(format, args...)}
}

// exists is an ErrExists saying what exists.
func exists(format string, args ...any) error {
	return &kindError{kind: ErrExists, msg: fmt.Sprintf(format, args...)}
}

// conflict is a state.ErrConflict (FailedPrecondition) saying what the
// request contradicts and what to do.
func conflict(format string, args ...any) error {
	return &kindError{kind: state.ErrConflict, msg: fmt.Sprintf(format, args...)}
}

// FieldError is a rejected request field: which one, and the rule it broke.
type FieldError struct {
	Field string
	Rule  string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Rule }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Rule: fmt.Sprintf(format, args...)}
}

// retryable is Unavailable for a call that was certainly not applied. The
// RetryInfo detail tells a forwarding server that retrying is safe.
func retryable(msg string) error {
	st := status.New(codes.Unavailable, msg)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(100 * time.Millisecond)}); err == nil {
		st = d
	}
	return st.Err()
}

// safeToRetry reports whether err is Unavailable with our RetryInfo.
func safeToRetry(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}

// toStatus is the one place errors become gRPC status codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if st, ok := peeringStatus(err); ok {
		return st
	}
	var fe *FieldError
	switch {
	case errors.As(err, &fe):
		st := status.New(codes.InvalidArgument, fe.Error())
		if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: fe.Field, Description: fe.Rule}}}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.Is(err, state.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, state.ErrConflict):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, state.ErrTokenInvalid):
		return status.Error(codes.PermissionDenied, "token "+err.Error())
	case errors.Is(err, state.ErrNotBootstrapped), errors.Is(err, authority.ErrNotBootstrapped):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, raft.ErrLeadershipLost):
		// The entry may still commit under the next leader: the outcome is
		// unknown, so this must not be retried blindly.
		return status.Error(codes.Aborted, "leadership changed while the write was in flight; it may or may not have been applied: read it back before retrying")
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrNotLeader),
		errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrRaftShutdown):
		return retryable(err.Error())
	case errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, ErrOverloaded), errors.Is(err, authority.ErrSignRateLimited):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, ErrUnreachable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, ErrDenied):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
