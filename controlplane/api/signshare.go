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

// maxSignInFlight bounds the signing requests one caller may have in
// progress on a server at once. The server's signing rate is spent one
// signature at a time, in the order the signatures were asked for, so a
// caller holds at most this many places in that queue: another caller's
// renewal waits behind at most maxSignInFlight signatures of it, however
// large its batches, while a caller alone (an agent rotating thousands of
// SVIDs, one batch after another) still gets the whole rate.
const maxSignInFlight = 2

// signShare gives each caller that asks for SVIDs (an agent or a gateway,
// by SPIFFE ID) its share of the server's signing rate, so that one
// caller's batches cannot starve the others' renewals: at most
// maxSignInFlight requests in progress per caller, and, when a per-caller
// rate is set, its own token bucket in front of the server's rate (the
// burst is the largest batch, so any valid request can pass once the
// bucket is full). A request over either is refused at once, not queued:
// the caller retries later.
type signShare struct {
	limit rate.Limit
	burst int
	now   func() time.Time

	mu       sync.Mutex
	inFlight map[spiffeid.ID]int // callers with requests in progress only
	lru      *list.List          // of *signCaller, most recent first
	callers  map[spiffeid.ID]*list.Element
	refused  *prometheus.CounterVec
}

type signCaller struct {
	id spiffeid.ID
	l  *rate.Limiter
}

// newSignShare returns per-caller buckets of perSecond (none when <= 0).
func newSignShare(perSecond int, now func() time.Time) *signShare {
	return &signShare{
		limit: rate.Limit(perSecond), burst: MaxSignBatch, now: now,
		inFlight: make(map[spiffeid.ID]int), lru: list.New(), callers: make(map[spiffeid.ID]*list.Element),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strait_ca_sign_refusals_total",
			Help: "Signing requests refused because the caller already had two in progress on this server, or was over sign_rate_per_caller, by the caller's kind (agent or gateway).",
		}, []string{"caller"}),
	}
}

// take admits a request of n signatures from caller, or refuses it with
// ResourceExhausted saying why and when to retry; release ends the
// request. kind labels the refusal ("agent" or "gateway").
func (s *signShare) take(caller spiffeid.ID, kind string, n int) (release func(), err error) {
	if s == nil {
		return func() {}, nil
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inFlight[caller] >= maxSignInFlight {
		s.refused.WithLabelValues(kind).Inc()
		return nil, status.Errorf(codes.ResourceExhausted,
			"%s already has %d signing requests in progress on this server: send them one after another", caller, maxSignInFlight)
	}
	if s.limit > 0 {
		r := s.bucket(caller).ReserveN(now, n)
		var wait time.Duration
		if r.OK() {
			if wait = r.DelayFrom(now); wait > 0 {
				r.CancelAt(now)
			}
		}
		if !r.OK() || wait > 0 {
			s.refused.WithLabelValues(kind).Inc()
			return nil, status.Errorf(codes.ResourceExhausted,
				"%s is over its share of this server's signing rate (%v signatures/s, bursts of %d; sign_rate_per_caller): retry in %s",
				caller, float64(s.limit), s.burst, max(wait, time.Millisecond).Round(time.Millisecond))
		}
	}
	s.inFlight[caller]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.inFlight[caller]--; s.inFlight[caller] <= 0 {
			delete(s.inFlight, caller)
		}
	}, nil
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
