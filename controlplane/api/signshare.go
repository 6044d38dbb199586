package api

import (
	"container/list"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxSignCallers bounds the callers whose signing share is remembered; the
// least recently seen is forgotten first (and starts again with a full
// bucket, which only ever favours it).
const maxSignCallers = 10_000

// signShare gives each caller that asks for SVIDs (an agent or a gateway,
// by SPIFFE ID) its own token bucket in front of the server's signing
// rate, so that one caller's batches cannot use up the rate the others'
// renewals need. A request that the caller's bucket cannot cover now is
// refused at once, not queued: the caller retries later. The burst is the
// largest batch, so any valid request can pass once the bucket is full.
type signShare struct {
	limit rate.Limit
	burst int
	now   func() time.Time

	mu      sync.Mutex
	lru     *list.List // of *signCaller, most recent first
	callers map[spiffeid.ID]*list.Element
	refused *prometheus.CounterVec
}

type signCaller struct {
	id spiffeid.ID
	l  *rate.Limiter
}

// newSignShare returns per-caller buckets of perSecond (none when <= 0).
func newSignShare(perSecond int, now func() time.Time) *signShare {
	return &signShare{
		limit: rate.Limit(perSecond), burst: MaxSignBatch, now: now,
		lru: list.New(), callers: make(map[spiffeid.ID]*list.Element),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strait_ca_sign_refusals_total",
			Help: "Signing requests refused because the caller (agent or gateway) was over its share of the server's signing rate.",
		}, []string{"caller"}),
	}
}

// take spends n signatures from caller's bucket, or refuses with
// ResourceExhausted saying when to retry. kind labels the refusal
// ("agent" or "gateway").
func (s *signShare) take(caller spiffeid.ID, kind string, n int) error {
	if s == nil || s.limit <= 0 {
		return nil
	}
	now := s.now()
	s.mu.Lock()
	l := s.bucket(caller)
	r := l.ReserveN(now, n)
	var wait time.Duration
	if r.OK() {
		if wait = r.DelayFrom(now); wait > 0 {
			r.CancelAt(now)
		}
	}
	s.mu.Unlock()
	if r.OK() && wait == 0 {
		return nil
	}
	s.refused.WithLabelValues(kind).Inc()
	return status.Errorf(codes.ResourceExhausted,
		"%s is over its share of this server's signing rate (%v signatures/s, bursts of %d; sign_rate_per_caller): retry in %s",
		caller, float64(s.limit), s.burst, max(wait, time.Millisecond).Round(time.Millisecond))
}

// bucket returns caller's limiter, making it the most recent. Lock held.
func (s *signShare) bucket(id spiffeid.ID) *rate.Limiter {
	if e, ok := s.callers[id]; ok {
		s.lru.MoveToFront(e)
		return e.Value.(*signCaller).l
	}
	if s.lru.Len() >= maxSignCallers {
		old := s.lru.Back()
		s.lru.Remove(old)
		delete(s.callers, old.Value.(*signCaller).id)
	}
	c := &signCaller{id: id, l: rate.NewLimiter(s.limit, s.burst)}
	s.callers[id] = s.lru.PushFront(c)
	return c.l
}
