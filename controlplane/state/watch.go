package state

import (
	"context"
	"sync"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// The watch machinery is a singly linked list of events shared by all
// subscribers. Apply appends under the store's write lock; each item's
// ready channel is closed when its successor is linked, so a subscriber
// waits on its own cursor and nobody ever blocks apply. The publisher keeps
// the last `retain` items reachable from head for resumption; a subscriber
// that falls further behind than that is resynchronised with a full state
// instead of pinning an unbounded chain in memory.

type item struct {
	ev    *apipb.WatchEvent
	reset bool // the state was replaced (snapshot restore): resynchronise
	next  *item
	ready chan struct{}
}

type publisher struct {
	mu     sync.Mutex
	head   *item // oldest retained; changes after head.ev.Index are all linked after it
	tail   *item
	count  int
	retain int
}

func newPublisher(retain int, index uint64) *publisher {
	it := &item{ev: &apipb.WatchEvent{Index: index}, ready: make(chan struct{})}
	return &publisher{head: it, tail: it, retain: retain}
}

// publish links ev. Called with the store's write lock held.
func (p *publisher) publish(ev *apipb.WatchEvent) { p.link(&item{ev: ev, ready: make(chan struct{})}) }

// restart links a reset marker and forgets history: events before a
// restored snapshot cannot be replayed.
func (p *publisher) restart(index uint64) {
	it := &item{ev: &apipb.WatchEvent{Index: index}, reset: true, ready: make(chan struct{})}
	p.link(it)
	p.mu.Lock()
	p.head, p.count = it, 0
	p.mu.Unlock()
}

func (p *publisher) link(it *item) {
	p.mu.Lock()
	prev := p.tail
	prev.next = it
	p.tail = it
	p.count++
	for p.count > p.retain {
		p.head = p.head.next
		p.count--
	}
	p.mu.Unlock()
	close(prev.ready)
}

func (p *publisher) currentTail() *item {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tail
}

// SnapshotChunk bounds the changes in one event of a full-state resync.
const SnapshotChunk = 1000

// Subscription is one watcher's cursor. Not safe for concurrent use.
type Subscription struct {
	s       *Store
	cursor  *item
	pending []*apipb.WatchEvent
}

// Watch is a watch of the catalog (a *Subscription). It is an alias of
// an unnamed interface so that consumers that must not import this
// package can declare the same type.
type Watch = interface {
	Next(ctx context.Context) (*apipb.WatchEvent, error)
}

// Subscribe starts a watch after fromIndex: a replay of the changes after it
// when they are still retained, otherwise (and for zero) a reset and the
// full state. Either way an event with synced set follows.
func (s *Store) Subscribe(fromIndex uint64) Watch {
	sub := &Subscription{s: s}
	s.mu.RLock()
	defer s.mu.RUnlock()
	sub.resume(fromIndex)
	return sub
}

// resume fills pending and sets the cursor. Store read lock held.
func (sub *Subscription) resume(from uint64) {
	p := sub.s.events
	p.mu.Lock()
	head, tail := p.head, p.tail
	p.mu.Unlock()
	if from == 0 || from < head.ev.Index || from > tail.ev.Index {
		sub.resync(tail)
		return
	}
	sub.pending = sub.pending[:0]
	for it := head; it != tail; {
		it = it.next
		if it.ev.Index > from && len(it.ev.Changes) > 0 {
			sub.pending = append(sub.pending, it.ev)
		}
	}
	sub.pending = append(sub.pending, &apipb.WatchEvent{Index: tail.ev.Index, Synced: true})
	sub.cursor = tail
}

// resync queues the full state as of tail. Store read lock held.
func (sub *Subscription) resync(tail *item) {
	s := sub.s
	idx := tail.ev.Index
	out := []*apipb.WatchEvent{{Index: idx, Resync: true}}
	cur := out[0]
	add := func(c *apipb.Change) {
		if len(cur.Changes) >= SnapshotChunk {
			cur = &apipb.WatchEvent{Index: idx}
			out = append(out, cur)
		}
		cur.Changes = append(cur.Changes, c)
	}
	for k, svc := range s.services {
		add(&apipb.Change{Change: &apipb.Change_Service{Service: svc}})
		for _, in := range s.instances[k] {
			add(&apipb.Change{Change: &apipb.Change_Instance{Instance: in}})
		}
	}
	out = append(out, &apipb.WatchEvent{Index: idx, Synced: true})
	sub.pending = out
	sub.cursor = tail
}

// Next returns the next event, waiting for one until ctx ends.
func (sub *Subscription) Next(ctx context.Context) (*apipb.WatchEvent, error) {
	for {
		if len(sub.pending) > 0 {
			ev := sub.pending[0]
			sub.pending[0] = nil
			sub.pending = sub.pending[1:]
			return ev, nil
		}
		select {
		case <-sub.cursor.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		next := sub.cursor.next
		p := sub.s.events
		p.mu.Lock()
		tail := p.tail
		lagging := tail.ev.Index-next.ev.Index > uint64(p.retain)
		p.mu.Unlock()
		switch {
		case next.reset:
			sub.s.mu.RLock()
			sub.resync(sub.s.events.currentTail())
			sub.s.mu.RUnlock()
			continue
		case lagging:
			// Replays what is still retained, or resynchronises.
			sub.s.mu.RLock()
			sub.resume(sub.cursor.ev.Index)
			sub.s.mu.RUnlock()
			continue
		}
		sub.cursor = next
		if len(next.ev.Changes) > 0 {
			return next.ev, nil
		}
	}
}

// CatalogChanged returns a channel closed at the next change of the
// catalog (services or instances, local or imported).
func (s *Store) CatalogChanged() <-chan struct{} { return s.events.currentTail().ready }
