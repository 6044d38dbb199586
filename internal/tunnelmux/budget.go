package tunnelmux

import "sync"

// Budget bounds the bytes received and not yet read across every stream
// of the sessions that share it (Config.Budget): what peers can make a
// process hold, whatever their windows allow. A data frame that would
// pass the limit first costs the stream holding the most unread bytes its
// place: that stream is reset (the peer reads "buffer budget exhausted")
// and its bytes are dropped, so a stream that is read promptly keeps
// going while streams nobody reads are cut. Safe for concurrent use.
type Budget struct {
	limit int64

	mu   sync.Mutex
	used int64
	held map[*Stream]int64 // streams holding unread bytes
}

// NewBudget returns a budget of limit bytes; limit must be at least
// twice the largest frame (512 KiB).
func NewBudget(limit int64) *Budget {
	return &Budget{limit: max(limit, 2*maxFrame), held: map[*Stream]int64{}}
}

// Buffered is the bytes received and not yet read, in all.
func (b *Budget) Buffered() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Limit is the budget's size in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// reserve takes n bytes for st. While that would pass the limit, the
// stream holding the most (counting st with its n bytes; on a tie, the
// other) loses its bytes and is returned to be reset; ok is false when
// that is st itself, whose n bytes are then not taken.
func (b *Budget) reserve(st *Stream, n int64) (victims []*Stream, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.used+n > b.limit {
		var v *Stream
		var most int64
		for s, h := range b.held {
			if s != st && h > most {
				v, most = s, h
			}
		}
		if v == nil || b.held[st]+n > most {
			b.used -= b.held[st]
			delete(b.held, st)
			return append(victims, st), false
		}
		b.used -= most
		delete(b.held, v)
		victims = append(victims, v)
	}
	b.used += n
	b.held[st] += n
	return victims, true
}

// release gives back n bytes st held (read, or dropped).
func (b *Budget) release(st *Stream, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h, ok := b.held[st]
	if !ok {
		return // already taken back (the stream was reset by the budget)
	}
	n = min(n, h)
	b.used -= n
	if h == n {
		delete(b.held, st)
	} else {
		b.held[st] = h - n
	}
}

// drop gives back everything st holds.
func (b *Budget) drop(st *Stream) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= b.held[st]
	delete(b.held, st)
}
