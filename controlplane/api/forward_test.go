package api

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// TestNotSent: a forwarded write whose connection to the leader could not
// be dialed was never sent, so it is retried as "no leader" instead of
// being reported as a write of unknown outcome. The dial failure is a real
// one (a port nobody listens on), so a grpc-go upgrade that rewords it
// fails here rather than in production.
func TestNotSent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: every dial is refused
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, dialErr := apipb.NewCatalogClient(conn).Register(ctx, &apipb.RegisterRequest{})
	if !notSent(dialErr) {
		t.Fatalf("a refused dial is not recognised as unsent: %v", dialErr)
	}
	for _, err := range []error{
		nil,
		status.Error(codes.Unavailable, "transport is closing"),
		status.Error(codes.Unavailable, "error reading from server: EOF"),
		status.Error(codes.Internal, "transport: Error while dialing: nope"),
	} {
		if notSent(err) {
			t.Errorf("%v taken for an unsent call", err)
		}
	}
}
