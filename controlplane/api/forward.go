package api

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/trust"
)

// forwardedHeader marks a call forwarded by a server. A forwarded call that
// lands on a non-leader (leadership moved meanwhile) is not forwarded again:
// it fails Unavailable and the client retries, so calls never loop.
const forwardedHeader = "strait-forwarded"

// forward runs a write against the leader when this server is not it. It
// returns handled=false when the call should run here. A forwarded write
// that fails Unavailable without the leader saying it was not applied (the
// connection broke mid-call) has an unknown outcome and becomes Aborted, so
// clients do not retry it blindly.
func forward[Resp any](ctx context.Context, s *Server, call func(context.Context, *grpc.ClientConn) (Resp, error)) (Resp, bool, error) {
	resp, handled, err := forwardRead(ctx, s, call)
	if handled && notSent(err) {
		// The connection to the leader was found dead only when the call
		// was made, and redialing it failed: nothing reached the leader.
		return resp, handled, fmt.Errorf("%w (%s)", ErrNoLeader, status.Convert(err).Message())
	}
	if handled && err != nil && status.Code(err) == codes.Unavailable && !safeToRetry(err) {
		err = status.Errorf(codes.Aborted, "lost the leader while forwarding the write; it may or may not have been applied: read it back before retrying (%s)", status.Convert(err).Message())
	}
	return resp, handled, err
}

// forwardRead is forward for calls that are safe to repeat.
func forwardRead[Resp any](ctx context.Context, s *Server, call func(context.Context, *grpc.ClientConn) (Resp, error)) (resp Resp, handled bool, err error) {
	if s.cfg.Raft.IsLeader() {
		return resp, false, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get(forwardedHeader)) > 0 {
		return resp, true, retryable(ErrNotLeader.Error() + "; leadership moved, retry")
	}
	conn, err := s.cfg.Raft.LeaderConn(ctx)
	if err != nil {
		return resp, true, err
	}
	if !ready(ctx, conn) {
		// Nothing was sent: the leader we know of cannot be reached (it
		// may have just died); the client retries after the election.
		return resp, true, ErrNoLeader
	}
	out := metadata.Pairs(forwardedHeader, "1")
	for _, v := range md.Get(authHeader) {
		out.Append(authHeader, v)
	}
	if id, ok := s.peerID(ctx); ok && !trust.IsServer(id, s.cfg.TrustDomain()) {
		out.Append(forwardedForHeader, id.String())
	}
	resp, err = call(metadata.NewOutgoingContext(ctx, out), conn)
	return resp, true, err
}

// ready waits briefly for conn to the leader to be usable. A connection
// that fails to come up means a forwarded call would not have been sent.
func ready(ctx context.Context, conn *grpc.ClientConn) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for {
		st := conn.GetState()
		switch st {
		case connectivity.Ready:
			return true
		case connectivity.TransientFailure, connectivity.Shutdown:
			return false
		case connectivity.Idle:
			conn.Connect()
		}
		if !conn.WaitForStateChange(ctx, st) {
			return false
		}
	}
}

// notSent reports whether a forwarded call failed because no transport to
// the leader could be established, so the request never left this server.
// grpc-go says so only in the status message of the failed dial, which it
// has worded this way since v1.0 ("connection error: desc = \"transport:
// Error while dialing ...\"").
func notSent(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable && strings.Contains(st.Message(), "transport: Error while dialing")
}
