package tunnelmux

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Stream is one byte stream of a session. It is a net.Conn; CloseWrite
// half-closes it and Close abandons what the peer still sends.
type Stream struct {
	s      *Session
	id     uint32
	header []byte

	mu   sync.Mutex
	cond sync.Cond
	// Received bytes not yet read are buf[off:]. The read loop appends
	// and compacts; Read only advances off.
	buf        []byte
	off        int
	recvWindow uint32 // bytes the peer may still send
	consumed   uint32 // bytes read and not yet granted back
	sendWindow uint32 // bytes this end may still send
	remoteDone bool   // the peer sent fin
	localDone  bool   // this end sent fin
	closed     bool   // Close was called
	evicted    bool   // the budget dropped its bytes (err says so)
	err        error  // reset, or the session's end
	rd, wd     deadline
}

func newStream(s *Session, id, window uint32) *Stream {
	st := &Stream{s: s, id: id, recvWindow: window, sendWindow: window}
	st.cond.L = &st.mu
	st.rd.init(st)
	st.wd.init(st)
	return st
}

// Header is the payload the stream was opened with.
func (st *Stream) Header() []byte { return st.header }

// Read reads received bytes; io.EOF once the peer has closed its side and
// everything it sent is read.
func (st *Stream) Read(p []byte) (int, error) {
	st.mu.Lock()
	for {
		if n := copy(p, st.buf[st.off:]); n > 0 {
			if b := st.s.cfg.Budget; b != nil {
				b.release(st, int64(n))
			}
			st.off += n
			st.consumed += uint32(n)
			var grant uint32
			// Grant the window back in halves, not per read.
			if !st.remoteDone && st.consumed >= st.s.cfg.Window/2 {
				grant, st.consumed = st.consumed, 0
				st.recvWindow += grant
			}
			st.mu.Unlock()
			if grant > 0 {
				st.s.writeControl(frameHeader{typ: typeWindow, stream: st.id, length: grant}, nil)
			}
			return n, nil
		}
		switch {
		case st.closed:
			st.mu.Unlock()
			return 0, net.ErrClosed
		case st.err != nil:
			err := st.err
			st.mu.Unlock()
			return 0, err
		case st.remoteDone:
			st.mu.Unlock()
			return 0, io.EOF
		case st.rd.expired:
			st.mu.Unlock()
			return 0, errTimeout
		case len(p) == 0:
			st.mu.Unlock()
			return 0, nil
		}
		st.cond.Wait()
	}
}

// Write sends p, in frames of at most maxFrame bytes, as the peer's window
// allows.
func (st *Stream) Write(p []byte) (int, error) { return st.write(p, modeNormal) }

// WriteDeferred sends a small p (at most 16 KiB) like Write, except that
// when nothing else is leaving, its frame waits (for at most the session's
// DeferDelay) for another frame to go with: for a reply the stream's
// first data will likely follow, which then costs no write of its own.
func (st *Stream) WriteDeferred(p []byte) (int, error) {
	if len(p) > maxDirect {
		return 0, fmt.Errorf("deferred write of %d bytes (at most %d)", len(p), maxDirect)
	}
	return st.write(p, modeDeferred)
}

func (st *Stream) write(p []byte, mode int) (int, error) {
	written := 0
	for len(p) > 0 {
		st.mu.Lock()
		for st.sendWindow == 0 && st.writable() == nil {
			st.cond.Wait()
		}
		if err := st.writable(); err != nil {
			st.mu.Unlock()
			return written, err
		}
		n := min(len(p), int(st.sendWindow), maxFrame)
		st.sendWindow -= uint32(n)
		wait := st.wd.ch
		st.mu.Unlock()
		if err := st.s.write([]frame{{frameHeader{typ: typeData, stream: st.id, length: uint32(n)}, p[:n]}}, wait, mode); err != nil {
			st.mu.Lock()
			st.sendWindow += uint32(n) // not sent
			st.mu.Unlock()
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// writable is why the stream cannot send now, or nil. Called with mu held.
func (st *Stream) writable() error {
	switch {
	case st.closed:
		return net.ErrClosed
	case st.err != nil:
		return st.err
	case st.localDone:
		return io.ErrClosedPipe
	case st.wd.expired:
		return errTimeout
	}
	return nil
}

// CloseWrite tells the peer this end sends nothing more; reading goes on.
func (st *Stream) CloseWrite() error {
	st.mu.Lock()
	if st.localDone || st.err != nil {
		st.mu.Unlock()
		return nil
	}
	st.localDone = true
	both := st.remoteDone
	st.mu.Unlock()
	err := st.s.writeControl(frameHeader{typ: typeFin, stream: st.id}, nil)
	if both {
		st.s.forget(st.id)
	}
	return err
}

// Close closes the stream both ways: a reset if the peer had not finished
// sending (so that it stops, and reads, after the bytes already sent, an
// error rather than an end), else a fin if this end had not sent one.
func (st *Stream) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	reset := !st.remoteDone && st.err == nil
	fin := !reset && !st.localDone && st.err == nil
	st.localDone = true
	st.buf, st.off = nil, 0
	if b := st.s.cfg.Budget; b != nil {
		b.drop(st)
	}
	st.cond.Broadcast()
	st.mu.Unlock()
	st.rd.stop()
	st.wd.stop()
	st.s.forget(st.id)
	switch {
	case reset:
		return st.s.writeControl(frameHeader{typ: typeReset, stream: st.id, length: uint32(len(closedByPeer))}, []byte(closedByPeer))
	case fin:
		return st.s.writeControl(frameHeader{typ: typeFin, stream: st.id}, nil)
	}
	return nil
}

const closedByPeer = "closed"

// receive reads a data frame's n bytes from r into the stream (the read
// loop). A peer sending beyond the window breaks the protocol.
func (st *Stream) receive(r *bufio.Reader, n int) error {
	st.mu.Lock()
	if uint32(n) > st.recvWindow {
		st.mu.Unlock()
		return fmt.Errorf("%w: %d bytes on stream %d beyond its window of %d", errProtocol, n, st.id, st.recvWindow)
	}
	if st.remoteDone {
		st.mu.Unlock()
		return fmt.Errorf("%w: data on stream %d after its fin", errProtocol, st.id)
	}
	st.recvWindow -= uint32(n)
	if st.closed || st.err != nil {
		st.mu.Unlock()
		_, err := r.Discard(n)
		return readErr(err)
	}
	if b := st.s.cfg.Budget; b != nil {
		st.mu.Unlock()
		victims, ok := b.reserve(st, int64(n))
		for _, v := range victims {
			v.evict()
		}
		if !ok {
			_, err := r.Discard(n)
			return readErr(err)
		}
		st.mu.Lock()
		if st.closed || st.err != nil {
			st.mu.Unlock()
			b.release(st, int64(n))
			_, err := r.Discard(n)
			return readErr(err)
		}
	}
	// Make room at the end: start over when everything was read (letting
	// a large buffer go), move the unread bytes down when the end is full.
	if unread := len(st.buf) - st.off; unread == 0 {
		if cap(st.buf) > maxKept {
			st.buf = nil
		}
		st.buf, st.off = st.buf[:0], 0
	} else if cap(st.buf)-len(st.buf) < n && st.off > 0 {
		st.buf, st.off = st.buf[:copy(st.buf, st.buf[st.off:])], 0
	}
	start := len(st.buf)
	st.buf = grow(st.buf, n)
	tail := st.buf[start : start+n]
	st.mu.Unlock()
	// Read never touches bytes past the length it saw: filling the tail
	// needs no lock.
	if _, err := io.ReadFull(r, tail); err != nil {
		return readErr(err)
	}
	st.mu.Lock()
	if !st.closed && !st.evicted {
		st.buf = st.buf[:start+n]
		st.cond.Broadcast()
	}
	st.mu.Unlock()
	return nil
}

// Reset abandons the stream both ways, like Close, telling the peer why:
// it reads "stream reset by the peer: <reason>" (at most 256 bytes).
func (st *Stream) Reset(reason string) error {
	if len(reason) > maxReset {
		reason = reason[:maxReset]
	}
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed, st.localDone = true, true
	st.buf, st.off = nil, 0
	st.cond.Broadcast()
	st.mu.Unlock()
	if b := st.s.cfg.Budget; b != nil {
		b.drop(st)
	}
	st.rd.stop()
	st.wd.stop()
	st.s.forget(st.id)
	return st.s.writeControl(frameHeader{typ: typeReset, stream: st.id, length: uint32(len(reason))}, []byte(reason))
}

// evict ends a stream the budget took its bytes from: they are dropped,
// its reader and writer fail, and the peer is told why.
func (st *Stream) evict() {
	st.mu.Lock()
	if st.closed || st.err != nil {
		st.mu.Unlock()
		return
	}
	st.err = fmt.Errorf("%w: %s", ErrReset, budgetExhausted)
	st.evicted = true
	st.buf, st.off = nil, 0
	st.cond.Broadcast()
	st.mu.Unlock()
	st.s.forget(st.id)
	if st.s.cfg.OnRefuse != nil {
		st.s.cfg.OnRefuse(RefusedBudget)
	}
	// Possibly another session's: its connection must not hold up this
	// read loop.
	go st.s.writeControl(frameHeader{typ: typeReset, stream: st.id, length: uint32(len(budgetExhausted))}, []byte(budgetExhausted))
}

// maxKept is the largest receive buffer an idle stream keeps.
const maxKept = 256 << 10

// grow returns b with room for n more bytes past its length, which it
// keeps (the bytes in b[:len(b)] are kept too).
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), max(2*cap(b), len(b)+n, 4<<10))
	copy(nb, b)
	return nb
}

// grant adds to the send window (a window frame).
func (st *Stream) grant(n uint32) {
	st.mu.Lock()
	st.sendWindow += n
	st.cond.Broadcast()
	st.mu.Unlock()
}

// remoteFin records the peer's fin.
func (st *Stream) remoteFin() {
	st.mu.Lock()
	st.remoteDone = true
	both := st.localDone
	st.cond.Broadcast()
	st.mu.Unlock()
	if both {
		st.s.forget(st.id)
	}
}

// fail ends the stream with err (a reset, or the session's end); bytes
// already received can still be read.
func (st *Stream) fail(err error) {
	st.mu.Lock()
	if st.err == nil {
		st.err = err
	}
	st.cond.Broadcast()
	st.mu.Unlock()
	st.s.forget(st.id)
}

func (st *Stream) LocalAddr() net.Addr  { return st.s.conn.LocalAddr() }
func (st *Stream) RemoteAddr() net.Addr { return st.s.conn.RemoteAddr() }

func (st *Stream) SetDeadline(t time.Time) error {
	st.rd.set(t)
	st.wd.set(t)
	return nil
}

func (st *Stream) SetReadDeadline(t time.Time) error  { st.rd.set(t); return nil }
func (st *Stream) SetWriteDeadline(t time.Time) error { st.wd.set(t); return nil }

// deadline is a stream's read or write deadline. When it passes, expired
// is set, ch is closed, and the stream's and the session's waiters wake.
type deadline struct {
	st      *Stream
	timer   *time.Timer
	gen     uint64 // which set the timer belongs to
	expired bool   // guarded by st.mu
	ch      chan struct{}
}

func (d *deadline) init(st *Stream) { d.st, d.ch = st, make(chan struct{}) }

func (d *deadline) set(t time.Time) {
	st := d.st
	st.mu.Lock()
	defer st.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.expired {
		d.expired, d.ch = false, make(chan struct{})
	}
	if t.IsZero() {
		return
	}
	gen := d.gen
	expire := func() {
		st.mu.Lock()
		if d.gen != gen || d.expired {
			st.mu.Unlock()
			return
		}
		d.expired = true
		close(d.ch)
		st.cond.Broadcast()
		st.mu.Unlock()
		// A writer may be waiting for room in the session's buffer.
		st.s.wmu.Lock()
		st.s.wcond.Broadcast()
		st.s.wmu.Unlock()
	}
	if dur := time.Until(t); dur > 0 {
		d.timer = time.AfterFunc(dur, expire)
	} else {
		d.expired = true
		close(d.ch)
		st.cond.Broadcast()
	}
}

func (d *deadline) stop() {
	d.st.mu.Lock()
	defer d.st.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}
