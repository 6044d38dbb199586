package gateway

import (
	"sync"
	"time"
)

// logThrottle lets one log line per key through at most once per
// interval, and says how many it held back since the last. A peer that
// opens refused streams in a loop costs a counter increment each, not a
// log line each. Keys name a peer, a configured service and a fixed cause
// (never text a peer chose), so they are bounded by the configuration;
// the map is cleared should it ever pass maxThrottleKeys all the same.
type logThrottle struct {
	every time.Duration
	mu    sync.Mutex
	keys  map[string]*throttled
}

type throttled struct {
	last time.Time
	held int
}

const maxThrottleKeys = 4096

func newLogThrottle(every time.Duration) *logThrottle {
	return &logThrottle{every: every, keys: map[string]*throttled{}}
}

// allow reports whether a line for key may be logged now, and how many
// were held back since the last one that was.
func (l *logThrottle) allow(key string, now time.Time) (held int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.keys[key]
	if e == nil {
		if len(l.keys) >= maxThrottleKeys {
			clear(l.keys)
		}
		e = &throttled{}
		l.keys[key] = e
	} else if now.Sub(e.last) < l.every {
		e.held++
		return 0, false
	}
	held, e.held, e.last = e.held, 0, now
	return held, true
}
