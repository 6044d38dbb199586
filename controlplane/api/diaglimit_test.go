package api

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestDiagLimit: diagnostic calls in flight are bounded per token and in
// total; refusals are ResourceExhausted and counted; a finished call frees
// its place.
func TestDiagLimit(t *testing.T) {
	l := newDiagLimit()
	caller := func(tok string) context.Context {
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs(authHeader, "Bearer "+tok))
	}
	var releases []func()
	for range MaxDiagnosticsPerCaller {
		r, err := l.acquire(caller("strait_a"), "SiteStatus")
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	if _, err := l.acquire(caller("strait_a"), "SiteStatus"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("one call too many for a token: %v", err)
	}
	for i := MaxDiagnosticsPerCaller; i < MaxDiagnosticsInFlight; i++ {
		r, err := l.acquire(caller(fmt.Sprintf("strait_%d", i)), "CheckPeer")
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		releases = append(releases, r)
	}
	if _, err := l.acquire(caller("strait_new"), "CheckPeer"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("one call too many in total: %v", err)
	}
	if got := testutil.ToFloat64(l.refused.WithLabelValues("SiteStatus")) + testutil.ToFloat64(l.refused.WithLabelValues("CheckPeer")); got != 2 {
		t.Fatalf("refusals counted: %v, want 2", got)
	}
	releases[0]()
	if _, err := l.acquire(caller("strait_a"), "SiteStatus"); err != nil {
		t.Fatalf("after a release: %v", err)
	}
}
