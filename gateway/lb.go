package gateway

import (
	"math/rand/v2"
	"sync"
	"time"
)

// endpoint is one upstream (an instance, or a peer's gateway) with the
// state load balancing needs. It lives as long as its cluster lists it,
// across configuration updates.
type endpoint struct {
	addr   string
	mu     sync.Mutex
	active int       // connections in progress
	fails  int       // consecutive connect failures
	until  time.Time // ejected until
}

// pool is a cluster's endpoints. Picks go to the least-loaded endpoint
// (fewest active connections; ties broken at random), skipping ejected
// ones: an endpoint that fails to connect `failures` times in a row is
// ejected for `ejection`. When every endpoint is ejected, they are tried
// anyway (better a likely failure than a certain one).
type pool struct {
	mu        sync.Mutex
	eps       map[string]*endpoint
	order     []*endpoint
	failures  int
	ejection  time.Duration
	maxActive int
	now       func() time.Time
}

func newPool(failures int, ejection time.Duration, maxActive int) *pool {
	return &pool{eps: make(map[string]*endpoint), failures: max(failures, 1), ejection: ejection, maxActive: maxActive, now: time.Now}
}

// set replaces the endpoint list, keeping the state of those that stay.
func (p *pool) set(addrs []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := make(map[string]*endpoint, len(addrs))
	order := make([]*endpoint, 0, len(addrs))
	for _, a := range addrs {
		e := p.eps[a]
		if e == nil {
			e = &endpoint{addr: a}
		}
		next[a] = e
		order = append(order, e)
	}
	p.eps, p.order = next, order
}

// pick reserves the least-loaded endpoint not in tried, or nil (none
// left, or the cluster is at its connection limit).
func (p *pool) pick(tried map[*endpoint]bool) *endpoint {
	p.mu.Lock()
	order := p.order
	p.mu.Unlock()
	now := p.now()
	var best []*endpoint
	bestLoad, total := -1, 0
	var fallback *endpoint
	for _, e := range order {
		e.mu.Lock()
		load, ejected := e.active, now.Before(e.until)
		e.mu.Unlock()
		total += load
		if tried[e] {
			continue
		}
		if ejected {
			if fallback == nil {
				fallback = e
			}
			continue
		}
		switch {
		case bestLoad < 0 || load < bestLoad:
			best, bestLoad = []*endpoint{e}, load
		case load == bestLoad:
			best = append(best, e)
		}
	}
	if p.maxActive > 0 && total >= p.maxActive {
		return nil
	}
	var e *endpoint
	switch {
	case len(best) > 0:
		e = best[rand.IntN(len(best))]
	case fallback != nil:
		e = fallback
	default:
		return nil
	}
	e.mu.Lock()
	e.active++
	e.mu.Unlock()
	return e
}

// connected records the outcome of connecting to e.
func (p *pool) connected(e *endpoint, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ok {
		e.fails = 0
		return
	}
	e.fails++
	if e.fails >= p.failures {
		e.until = p.now().Add(p.ejection)
		e.fails = 0
	}
}

// done releases a reservation made by pick.
func (p *pool) done(e *endpoint) {
	e.mu.Lock()
	e.active--
	e.mu.Unlock()
}
