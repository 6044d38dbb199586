package tunnelmux

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Errors a session or stream returns.
var (
	errClosed    = errors.New("tunnel closed")
	ErrGoAway    = errors.New("the peer accepts no new streams on this tunnel")
	ErrReset     = errors.New("stream reset")
	errTimeout   = &timeoutError{} // a net.Error whose Timeout is true
	errProtocol  = errors.New("tunnel protocol error")
	errExhausted = errors.New("stream IDs exhausted")
)

type timeoutError struct{}

func (*timeoutError) Error() string   { return "i/o timeout" }
func (*timeoutError) Timeout() bool   { return true }
func (*timeoutError) Temporary() bool { return true }

// Config tunes a session; zero fields take the defaults.
type Config struct {
	// Window is each stream's receive window: the bytes a peer may send
	// on a stream before the reader consumes them. Default 16 MiB.
	Window uint32
	// AcceptBacklog bounds the streams opened by the peer and not yet
	// accepted; opens beyond it are reset. Default 1024.
	AcceptBacklog int
	// KeepAlive is how often an otherwise idle session is pinged; a
	// session that hears nothing for three intervals is closed. Default
	// 15s.
	KeepAlive time.Duration
	// MaxPending bounds the bytes written and not yet handed to the
	// connection; writers wait beyond it. Default 1 MiB.
	MaxPending int
	// CloseFlush bounds how long Close waits for pending bytes to leave.
	// Default 1s.
	CloseFlush time.Duration
	// DeferDelay bounds how long a deferred frame (Stream.WriteDeferred)
	// waits for another frame to leave with. Default 1ms.
	DeferDelay time.Duration
	// MaxStreams bounds the streams opened by the peer and open at once
	// (accepted or not); opens beyond it are reset ("too many streams on
	// this tunnel"). Default 4096.
	MaxStreams int
	// Budget, if set, bounds the bytes received and not yet read across
	// this session's streams and those of every session sharing it (see
	// Budget). Nil: only the windows bound them.
	Budget *Budget
	// OnRefuse, if set, is called (from the read loop: it must not block)
	// each time the session resets a stream of the peer's because of a
	// bound: cause is RefusedStreams, RefusedBacklog or RefusedBudget.
	OnRefuse func(cause string)
}

// Causes of the streams a session resets for a bound (Config.OnRefuse),
// with the reason the peer reads.
const (
	RefusedStreams = "streams_per_tunnel" // Config.MaxStreams
	RefusedBacklog = "accept_backlog"     // Config.AcceptBacklog
	RefusedBudget  = "buffer_budget"      // Config.Budget
)

func (c Config) withDefaults() Config {
	if c.Window == 0 {
		c.Window = 16 << 20
	}
	if c.AcceptBacklog == 0 {
		c.AcceptBacklog = 1024
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 15 * time.Second
	}
	if c.MaxPending == 0 {
		c.MaxPending = 1 << 20
	}
	if c.CloseFlush == 0 {
		c.CloseFlush = time.Second
	}
	if c.DeferDelay == 0 {
		c.DeferDelay = time.Millisecond
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = 4096
	}
	return c
}

// Session is one end of a tunnel.
type Session struct {
	conn net.Conn
	cfg  Config

	// Writing: frames are appended to pending under wmu and written to
	// conn by flushLoop.
	wmu     sync.Mutex
	wcond   sync.Cond
	pending []byte
	spare   []byte
	werr    error // the first write error, or errClosed
	writing bool  // a write to conn is in progress
	closing bool
	// deferred: pending holds only deferred frames, which the flusher
	// leaves until another frame comes or deferTimer fires.
	deferred   bool
	deferTimer *time.Timer

	mu           sync.Mutex
	streams      map[uint32]*Stream
	peerStreams  int // of streams, those the peer opened
	nextID       uint32
	accept       chan *Stream
	goAway       bool // sent: the peer may open nothing more
	remoteGoAway bool

	done     chan struct{} // closed when the session ends
	doneOnce sync.Once
	err      error // why it ended, set before done closes

	lastRecv atomic.Int64 // unix nanoseconds of the last frame read
}

// Client starts the dialing end of a tunnel over conn.
func Client(conn net.Conn, cfg Config) *Session { return newSession(conn, cfg, 1) }

// Server starts the accepting end of a tunnel over conn.
func Server(conn net.Conn, cfg Config) *Session { return newSession(conn, cfg, 2) }

func newSession(conn net.Conn, cfg Config, firstID uint32) *Session {
	cfg = cfg.withDefaults()
	s := &Session{
		conn: conn, cfg: cfg, streams: make(map[uint32]*Stream), nextID: firstID,
		accept: make(chan *Stream, cfg.AcceptBacklog), done: make(chan struct{}),
	}
	s.wcond.L = &s.wmu
	s.lastRecv.Store(time.Now().UnixNano())
	go s.flushLoop()
	go s.readLoop()
	go s.keepAlive()
	return s
}

// Open opens a stream whose first frame carries header. The stream's
// first data, if any, leaves with the open, in the same write.
func (s *Session) Open(header, data []byte) (*Stream, error) {
	if len(header) > MaxOpenPayload {
		return nil, fmt.Errorf("stream header of %d bytes (at most %d)", len(header), MaxOpenPayload)
	}
	s.mu.Lock()
	switch {
	case s.IsClosed():
		s.mu.Unlock()
		return nil, s.err
	case s.remoteGoAway:
		s.mu.Unlock()
		return nil, ErrGoAway
	case s.nextID > 1<<32-3:
		s.mu.Unlock()
		return nil, errExhausted
	}
	// What fits in one frame and the window leaves with the open.
	first, rest := data, []byte(nil)
	if n := min(int(s.cfg.Window), maxFrame); len(first) > n {
		first, rest = data[:n], data[n:]
	}
	id := s.nextID
	s.nextID += 2
	st := newStream(s, id, s.cfg.Window)
	st.sendWindow -= uint32(len(first))
	s.streams[id] = st
	s.mu.Unlock()
	fs := []frame{{frameHeader{typ: typeOpen, stream: id, length: uint32(len(header))}, header}}
	if len(first) > 0 {
		fs = append(fs, frame{frameHeader{typ: typeData, stream: id, length: uint32(len(first))}, first})
	}
	if err := s.write(fs, nil, modeNormal); err != nil {
		s.forget(id)
		return nil, err
	}
	if len(rest) > 0 {
		if _, err := st.Write(rest); err != nil {
			st.Close()
			return nil, err
		}
	}
	return st, nil
}

// Accept waits for a stream opened by the peer.
func (s *Session) Accept() (*Stream, error) {
	select {
	case st := <-s.accept:
		return st, nil
	case <-s.done:
		// Streams that arrived before the end are still handed out.
		select {
		case st := <-s.accept:
			return st, nil
		default:
		}
		return nil, s.err
	}
}

// GoAway tells the peer to open no new streams; streams in flight go on.
func (s *Session) GoAway() error {
	s.mu.Lock()
	s.goAway = true
	s.mu.Unlock()
	return s.writeControl(frameHeader{typ: typeGoAway}, nil)
}

// IsClosed reports whether the session has ended.
func (s *Session) IsClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Close ends the session: what is pending is sent (for at most
// CloseFlush), then every stream fails and the connection closes.
func (s *Session) Close() error {
	s.wmu.Lock()
	if !s.closing {
		s.closing = true
		s.conn.SetWriteDeadline(time.Now().Add(s.cfg.CloseFlush))
		s.wcond.Broadcast()
		for s.werr == nil {
			s.wcond.Wait()
		}
	}
	s.wmu.Unlock()
	s.shutdown(errClosed)
	return nil
}

// shutdown ends the session with err (once) and fails every stream.
func (s *Session) shutdown(err error) {
	s.doneOnce.Do(func() {
		s.mu.Lock()
		s.err = err
		close(s.done)
		streams := s.streams
		s.streams = map[uint32]*Stream{}
		s.mu.Unlock()
		s.conn.Close()
		s.wmu.Lock()
		if s.werr == nil {
			s.werr = err
		}
		s.wcond.Broadcast()
		s.wmu.Unlock()
		for _, st := range streams {
			st.fail(err)
			if b := s.cfg.Budget; b != nil {
				// Streams never accepted are never closed; the budget
				// forgets them all.
				b.drop(st)
			}
		}
	})
}

func (s *Session) forget(id uint32) {
	s.mu.Lock()
	if _, ok := s.streams[id]; ok {
		delete(s.streams, id)
		if id%2 != s.nextID%2 {
			s.peerStreams--
		}
	}
	s.mu.Unlock()
}

// refuse resets a stream the peer opened, with a reason it reads, and
// reports the cause.
func (s *Session) refuse(id uint32, cause, reason string) error {
	if s.cfg.OnRefuse != nil {
		s.cfg.OnRefuse(cause)
	}
	return s.writeControl(frameHeader{typ: typeReset, stream: id, length: uint32(len(reason))}, []byte(reason))
}

// frame is a header and its payload, to be written.
type frame struct {
	h frameHeader
	p []byte
}

func appendFrames(b []byte, fs []frame) []byte {
	for _, f := range fs {
		b = append(f.h.append(b), f.p...)
	}
	return b
}

// How a frame is written.
const (
	modeNormal   = iota // after what is pending; waits for room
	modeControl         // never waits for room
	modeDeferred        // waits for company, for at most DeferDelay
)

// maxDirect is the largest payload a writer sends itself on an idle
// connection: an interactive exchange's size, not a bulk transfer's.
const maxDirect = 16 << 10

// writeControl appends a small frame without waiting for room: the read
// loop and window updates must never wait on the peer, or two busy ends
// could each wait for the other to read.
func (s *Session) writeControl(h frameHeader, p []byte) error {
	return s.write([]frame{{h, p}}, nil, modeControl)
}

// write appends frames to what is pending, to leave together (see mode).
// Unless mode is modeControl, it waits while MaxPending bytes are pending,
// until wait (if not nil) is closed.
func (s *Session) write(fs []frame, wait <-chan struct{}, mode int) error {
	size := 0
	for _, f := range fs {
		size += len(f.p)
	}
	s.wmu.Lock()
	for mode != modeControl && len(s.pending) >= s.cfg.MaxPending && s.werr == nil && !s.closing {
		if wait != nil {
			select {
			case <-wait:
				s.wmu.Unlock()
				return errTimeout
			default:
			}
		}
		s.wcond.Wait()
	}
	switch {
	case s.werr != nil:
		err := s.werr
		s.wmu.Unlock()
		return err
	case s.closing:
		s.wmu.Unlock()
		return errClosed
	case mode == modeDeferred && !s.writing && (len(s.pending) == 0 || s.deferred):
		// Nothing is leaving now: wait for a frame to go with (or for
		// the timer), out of the flusher's sight.
		s.pending = appendFrames(s.pending, fs)
		if !s.deferred {
			s.deferred = true
			if s.deferTimer == nil {
				s.deferTimer = time.AfterFunc(s.cfg.DeferDelay, s.flushDeferred)
			} else {
				s.deferTimer.Reset(s.cfg.DeferDelay)
			}
		}
		s.wmu.Unlock()
		return nil
	case s.writing || (len(s.pending) > 0 && !s.deferred) || size > maxDirect:
		// A write is in progress, or frames wait for the flusher, or this
		// is bulk data: it leaves after them, with the flusher's next
		// write. (Bulk goes through the flusher so that encrypting and
		// sending one chunk overlaps reading the next.)
		if !s.writing && (len(s.pending) == 0 || s.deferred) {
			s.wcond.Broadcast()
		}
		s.deferred = false
		s.pending = appendFrames(s.pending, fs)
		s.wmu.Unlock()
		return nil
	}
	// The connection is idle, nothing waits but deferred frames, and the
	// frame is small: write it (after them) from here, with no hand-off
	// to the flusher.
	s.writing = true
	buf := s.spare[:0]
	if s.deferred {
		buf, s.pending, s.deferred = s.pending, buf, false
	}
	s.spare = nil
	buf = appendFrames(buf, fs)
	s.wmu.Unlock()
	_, err := s.conn.Write(buf)
	s.wmu.Lock()
	s.wrote(buf, err)
	s.wmu.Unlock()
	return err
}

// wrote ends a write to the connection: it keeps buf for reuse, records a
// failure, and lets the flusher send what piled up meanwhile. Called with
// wmu held.
func (s *Session) wrote(buf []byte, err error) {
	s.writing = false
	if cap(buf) <= 4*s.cfg.MaxPending {
		s.spare = buf[:0]
	}
	if err != nil && s.werr == nil {
		s.werr = err
		go s.shutdown(fmt.Errorf("tunnel write: %w", err))
	}
	s.wcond.Broadcast()
}

// flushDeferred lets the flusher send deferred frames that found no
// company in time.
func (s *Session) flushDeferred() {
	s.wmu.Lock()
	if s.deferred {
		s.deferred = false
		s.wcond.Broadcast()
	}
	s.wmu.Unlock()
}

// flushLoop writes what piled up while the connection was busy, all of it
// in one write.
func (s *Session) flushLoop() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for {
		for s.werr == nil && (s.writing || ((len(s.pending) == 0 || s.deferred) && !s.closing)) {
			s.wcond.Wait()
		}
		if s.werr != nil || len(s.pending) == 0 {
			if s.werr == nil {
				s.werr = errClosed
			}
			s.wcond.Broadcast()
			return
		}
		s.writing, s.deferred = true, false
		buf := s.pending
		s.pending = s.spare[:0]
		s.spare = nil
		s.wmu.Unlock()
		_, err := s.conn.Write(buf)
		s.wmu.Lock()
		s.wrote(buf, err)
	}
}

// readLoop reads frames and hands them to their streams.
func (s *Session) readLoop() {
	r := bufio.NewReaderSize(s.conn, 64<<10)
	hdr := make([]byte, headerSize)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			s.shutdown(readErr(err))
			return
		}
		s.lastRecv.Store(time.Now().UnixNano())
		h, err := parseHeader(hdr)
		if err == nil {
			err = s.handle(h, r)
		}
		if err != nil {
			s.shutdown(err)
			return
		}
	}
}

// readErr is the session's end for a read error; nil for nil.
func readErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errClosed
	}
	return fmt.Errorf("tunnel read: %w", err)
}

// handle acts on one frame; an error ends the session.
func (s *Session) handle(h frameHeader, r *bufio.Reader) error {
	switch h.typ {
	case typePing:
		if h.flags&flagAck == 0 {
			return s.writeControl(frameHeader{typ: typePing, flags: flagAck, length: h.length}, nil)
		}
		return nil
	case typeGoAway:
		s.mu.Lock()
		s.remoteGoAway = true
		s.mu.Unlock()
		return nil
	case typeOpen:
		return s.handleOpen(h, r)
	}
	s.mu.Lock()
	st := s.streams[h.stream]
	s.mu.Unlock()
	if st == nil {
		// A stream this end has forgotten (reset, or closed both ways):
		// skip what the peer had in flight.
		if h.hasPayload() {
			if _, err := r.Discard(int(h.length)); err != nil {
				return readErr(err)
			}
		}
		return nil
	}
	switch h.typ {
	case typeData:
		return st.receive(r, int(h.length))
	case typeWindow:
		st.grant(h.length)
	case typeFin:
		st.remoteFin()
	case typeReset:
		reason := make([]byte, h.length)
		if _, err := io.ReadFull(r, reason); err != nil {
			return readErr(err)
		}
		st.fail(fmt.Errorf("%w by the peer: %s", ErrReset, reason))
	}
	return nil
}

func (s *Session) handleOpen(h frameHeader, r *bufio.Reader) error {
	payload := make([]byte, h.length)
	if _, err := io.ReadFull(r, payload); err != nil {
		return readErr(err)
	}
	// The peer's IDs have the other parity than ours.
	if h.stream%2 == s.nextID%2 {
		return fmt.Errorf("%w: the peer opened stream %d, of this end's parity", errProtocol, h.stream)
	}
	s.mu.Lock()
	if _, dup := s.streams[h.stream]; dup {
		s.mu.Unlock()
		return fmt.Errorf("%w: stream %d opened twice", errProtocol, h.stream)
	}
	if s.goAway || s.IsClosed() {
		s.mu.Unlock()
		return s.writeControl(frameHeader{typ: typeReset, stream: h.stream, length: uint32(len(goneAway))}, []byte(goneAway))
	}
	if s.peerStreams >= s.cfg.MaxStreams {
		s.mu.Unlock()
		return s.refuse(h.stream, RefusedStreams, fmt.Sprintf("%s (at most %d)", tooManyStreams, s.cfg.MaxStreams))
	}
	st := newStream(s, h.stream, s.cfg.Window)
	st.header = payload
	select {
	case s.accept <- st:
		s.streams[h.stream] = st
		s.peerStreams++
		s.mu.Unlock()
		return nil
	default:
		s.mu.Unlock()
		return s.refuse(h.stream, RefusedBacklog, backlogFull)
	}
}

// Reasons of resets, as the peer reads them.
const (
	goneAway        = "going away"
	backlogFull     = "accept backlog full"
	tooManyStreams  = "too many streams on this tunnel"
	budgetExhausted = "buffer budget exhausted: this stream held the most unread bytes"
)

// keepAlive pings the peer every interval and ends the session when
// nothing has been read for three.
func (s *Session) keepAlive() {
	t := time.NewTicker(s.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			if now.Sub(time.Unix(0, s.lastRecv.Load())) > 3*s.cfg.KeepAlive {
				s.shutdown(fmt.Errorf("tunnel: nothing heard from the peer for %s", 3*s.cfg.KeepAlive))
				return
			}
			s.writeControl(frameHeader{typ: typePing}, nil)
		}
	}
}
