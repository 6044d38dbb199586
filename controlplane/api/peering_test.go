package api

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/federation/peering"
)

// TestPeeringStatus: the peering component's errors become status codes
// here (through toStatus), keeping their text; a token error names the
// field, and a refusal on a follower is safe to retry.
func TestPeeringStatus(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		code codes.Code
	}{
		{"no bundle endpoint", peering.ErrNoBundleEndpoint, codes.FailedPrecondition},
		{"not leader", peering.ErrNotLeader, codes.Unavailable},
		{"leadership moved", peering.ErrLeadershipMoved, codes.Unavailable},
		{"own site", fmt.Errorf("join: %w", peering.ErrOwnSite), codes.InvalidArgument},
		{"peer exists", peering.ErrPeerExists, codes.AlreadyExists},
		{"denied", peering.ErrDenied, codes.PermissionDenied},
		{"issuer unreachable", peering.ErrIssuerUnreachable, codes.FailedPrecondition},
		{"peer unreachable", peering.ErrPeerUnreachable, codes.Unavailable},
		{"too many streams", peering.ErrTooManyStreams, codes.ResourceExhausted},
		{"token", &peering.TokenError{Rule: "expired"}, codes.InvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := status.Convert(toStatus(tt.err))
			if st.Code() != tt.code || st.Message() != tt.err.Error() {
				t.Fatalf("status %v %q, want %v %q", st.Code(), st.Message(), tt.code, tt.err.Error())
			}
		})
	}
	if !safeToRetry(toStatus(peering.ErrNotLeader)) {
		t.Error("ErrNotLeader is not marked safe to retry")
	}
	st := status.Convert(toStatus(&peering.TokenError{Rule: "expired"}))
	var field string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) == 1 {
			field = br.FieldViolations[0].Field
		}
	}
	if field != "token" {
		t.Errorf("token error details %v, want a violation of field token", st.Details())
	}
	if _, ok := peeringStatus(errors.New("other")); ok {
		t.Error("peeringStatus claimed an unrelated error")
	}
}
