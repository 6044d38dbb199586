package api

import (
	"context"
	"encoding/hex"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/state"
)

// Diagnostic calls fan out (SiteStatus probes every server, CheckPeer
// dials a peer's servers), so what one caller can start is bounded: calls
// in flight per caller (token) and in total on this server. Past either,
// the call is refused with ResourceExhausted and counted.
const (
	MaxDiagnosticsPerCaller = 4
	MaxDiagnosticsInFlight  = 16
)

// diagLimit counts diagnostic calls in flight.
type diagLimit struct {
	mu      sync.Mutex
	total   int
	callers map[string]int
	refused *prometheus.CounterVec
}

func newDiagLimit() *diagLimit {
	return &diagLimit{callers: make(map[string]int), refused: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "strait_api_diagnostics_refused_total",
		Help: "Diagnostic calls (site status, peer intention checks) refused for too many in flight, by method.",
	}, []string{"method"})}
}

// acquire admits one call of method (a bounded label: "SiteStatus",
// "CheckPeer") by the caller of ctx, or refuses it. release must be
// called when an admitted call ends.
func (l *diagLimit) acquire(ctx context.Context, method string) (release func(), err error) {
	secret, _ := bearer(ctx)
	h := state.HashSecret(secret)
	caller := hex.EncodeToString(h[:])
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.callers[caller] >= MaxDiagnosticsPerCaller:
		l.refused.WithLabelValues(method).Inc()
		return nil, status.Errorf(codes.ResourceExhausted, "%d %s calls of this token are already running: wait for them, then retry", MaxDiagnosticsPerCaller, method)
	case l.total >= MaxDiagnosticsInFlight:
		l.refused.WithLabelValues(method).Inc()
		return nil, status.Errorf(codes.ResourceExhausted, "this server is already running %d diagnostic calls: retry in a moment", MaxDiagnosticsInFlight)
	}
	l.total++
	l.callers[caller]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.total--
		if l.callers[caller]--; l.callers[caller] == 0 {
			delete(l.callers, caller)
		}
	}, nil
}
