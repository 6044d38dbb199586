package tunnelmux

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair returns both ends of a real loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func sessions(t testing.TB, cfg Config) (*Session, *Session) {
	t.Helper()
	a, b := tcpPair(t)
	c, s := Client(a, cfg), Server(b, cfg)
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func accept(t testing.TB, s *Session) *Stream {
	t.Helper()
	type res struct {
		st  *Stream
		err error
	}
	ch := make(chan res, 1)
	go func() { st, err := s.Accept(); ch <- res{st, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("accept: %v", r.err)
		}
		return r.st
	case <-time.After(10 * time.Second):
		t.Fatal("no stream accepted within 10s")
		return nil
	}
}

// openPair opens a stream with no header on c and accepts it on s.
func openPair(t testing.TB, c, s *Session) (local, remote *Stream) {
	t.Helper()
	st, err := c.Open(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st, accept(t, s)
}

// waitGoroutines waits (bounded) for the goroutine count to fall to n.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOpenHeaderAndHalfClose: the header arrives with the open; each
// direction ends on its own; the stream is forgotten once both have.
func TestOpenHeaderAndHalfClose(t *testing.T) {
	c, s := sessions(t, Config{})
	st, err := c.Open([]byte("hello header"), nil)
	if err != nil {
		t.Fatal(err)
	}
	in := accept(t, s)
	if string(in.Header()) != "hello header" {
		t.Fatalf("header %q", in.Header())
	}
	if _, err := st.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	got, err := io.ReadAll(in)
	if err != nil || string(got) != "request" {
		t.Fatalf("server read %q %v", got, err)
	}
	// The server's direction is still open after the client's fin.
	if _, err := in.Write([]byte("response")); err != nil {
		t.Fatal(err)
	}
	in.CloseWrite()
	got, err = io.ReadAll(st)
	if err != nil || string(got) != "response" {
		t.Fatalf("client read %q %v", got, err)
	}
	if _, err := st.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("write after CloseWrite: %v", err)
	}
	waitFor(t, func() bool { return numStreams(c) == 0 && numStreams(s) == 0 })
}

func numStreams(s *Session) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestManyStreamsFlowControl: concurrent streams with windows far smaller
// than what they carry all arrive intact, in both directions.
func TestManyStreamsFlowControl(t *testing.T) {
	c, s := sessions(t, Config{Window: 32 << 10, MaxPending: 64 << 10})
	const streams, size = 32, 1 << 20
	go func() {
		for {
			in, err := s.Accept()
			if err != nil {
				return
			}
			go func() { // echo
				defer in.Close()
				io.Copy(in, in)
				in.CloseWrite()
			}()
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := make([]byte, size)
			r := rand.New(rand.NewPCG(uint64(i), 1))
			for j := range data {
				data[j] = byte(r.Uint32())
			}
			st, err := c.Open(fmt.Appendf(nil, "stream %d", i), nil)
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			go func() {
				st.Write(data)
				st.CloseWrite()
			}()
			got, err := io.ReadAll(st)
			if err != nil || !bytes.Equal(got, data) {
				errs <- fmt.Errorf("stream %d: %d bytes back, equal %v, %v", i, len(got), bytes.Equal(got, data), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestSlowReaderDoesNotStallOthers: a stream whose reader stops holds at
// most its window; other streams keep flowing.
func TestSlowReaderDoesNotStallOthers(t *testing.T) {
	c, s := sessions(t, Config{Window: 64 << 10})
	stuck, stuckIn := openPair(t, c, s) // never read
	wrote := make(chan int, 1)
	go func() {
		n, _ := stuck.Write(make([]byte, 1<<20))
		wrote <- n
	}()
	other, otherIn := openPair(t, c, s)
	data := bytes.Repeat([]byte("x"), 4<<20)
	go func() { other.Write(data); other.CloseWrite() }()
	got, err := io.ReadAll(otherIn)
	if err != nil || len(got) != len(data) {
		t.Fatalf("other stream: %d bytes, %v", len(got), err)
	}
	select {
	case n := <-wrote:
		t.Fatalf("the stuck stream wrote %d bytes past its window", n)
	default:
	}
	// Reading the stuck stream lets its writer finish.
	go io.Copy(io.Discard, stuckIn)
	select {
	case n := <-wrote:
		if n != 1<<20 {
			t.Fatalf("wrote %d", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not finish once its reader read")
	}
}

// TestCloseResetsThePeer: closing a stream the peer still sends on resets
// it there; bytes that arrived before the reset are still read.
func TestCloseResetsThePeer(t *testing.T) {
	c, s := sessions(t, Config{})
	st, in := openPair(t, c, s)
	in.Write([]byte("status"))
	in.Close() // the client has not sent its fin: a reset follows the data
	buf := make([]byte, 6)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "status" {
		t.Fatalf("read %q %v", buf, err)
	}
	if _, err := st.Read(buf); !errors.Is(err, ErrReset) {
		t.Fatalf("read after the reset: %v", err)
	}
	waitFor(t, func() bool {
		_, err := st.Write([]byte("more"))
		return errors.Is(err, ErrReset)
	})
	if _, err := in.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

// TestDeadlines: a read with nothing to read and a write with no window
// time out; clearing the deadline lets them go on.
func TestDeadlines(t *testing.T) {
	c, s := sessions(t, Config{Window: 16 << 10})
	st, in := openPair(t, c, s)
	st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, errTimeout) {
		t.Fatalf("read: %v", err)
	}
	var ne net.Error
	if !errors.As(errTimeout, &ne) || !ne.Timeout() {
		t.Fatal("errTimeout is not a net.Error timeout")
	}
	st.SetReadDeadline(time.Time{})
	in.Write([]byte("a"))
	if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
		t.Fatalf("read after clearing the deadline: %v", err)
	}
	st.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := st.Write(make([]byte, 64<<10)) // four windows, nobody reads
	if !errors.Is(err, errTimeout) || n != 16<<10 {
		t.Fatalf("write: %d %v", n, err)
	}
	st.SetWriteDeadline(time.Time{})
	go io.Copy(io.Discard, in)
	if _, err := st.Write(make([]byte, 64<<10)); err != nil {
		t.Fatalf("write after clearing the deadline: %v", err)
	}
}

// TestGoAwayAndBacklog: after a go-away no new stream opens while one in
// flight goes on; opens beyond the accept backlog are reset.
func TestGoAwayAndBacklog(t *testing.T) {
	c, s := sessions(t, Config{AcceptBacklog: 2})
	var opened []*Stream
	for range 3 {
		st, err := c.Open(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		opened = append(opened, st)
	}
	if _, err := opened[2].Read(make([]byte, 1)); !errors.Is(err, ErrReset) || !strings.Contains(err.Error(), backlogFull) {
		t.Fatalf("third open beyond a backlog of 2: %v", err)
	}
	in := accept(t, s)
	if err := s.GoAway(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		_, err := c.Open(nil, nil)
		return errors.Is(err, ErrGoAway)
	})
	in.Write([]byte("still here"))
	in.CloseWrite()
	got, err := io.ReadAll(opened[0])
	if err != nil || string(got) != "still here" {
		t.Fatalf("stream in flight after go-away: %q %v", got, err)
	}
}

// TestSessionEnd: closing a session fails its streams and Accept, sends
// what was pending, and leaves no goroutine behind.
func TestSessionEnd(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		a, b := tcpPair(t)
		c, s := Client(a, Config{}), Server(b, Config{})
		st, in := openPair(t, c, s)
		st.Write([]byte("last words"))
		c.Close()
		got, err := io.ReadAll(in)
		if string(got) != "last words" || !errors.Is(err, errClosed) {
			t.Fatalf("server read %q %v", got, err)
		}
		if _, err := s.Accept(); !errors.Is(err, errClosed) {
			t.Fatalf("accept on an ended session: %v", err)
		}
		if _, err := st.Write([]byte("x")); err == nil {
			t.Fatal("write on a closed session")
		}
		if _, err := c.Open(nil, nil); err == nil {
			t.Fatal("open on a closed session")
		}
		waitFor(t, s.IsClosed)
	}()
	waitGoroutines(t, before)
}

// TestProtocolErrors: a peer that breaks the protocol ends the session.
func TestProtocolErrors(t *testing.T) {
	frame := func(h frameHeader, p []byte) []byte { return append(h.append(nil), p...) }
	for _, tt := range []struct {
		name string
		in   []byte
		want string
	}{
		{"unknown type", frame(frameHeader{typ: 99, stream: 1}, nil), "unknown frame type"},
		{"oversized open", frame(frameHeader{typ: typeOpen, stream: 1, length: MaxOpenPayload + 1}, nil), "payload"},
		{"open of the wrong parity", frame(frameHeader{typ: typeOpen, stream: 2}, nil), "parity"},
		{"opened twice", append(frame(frameHeader{typ: typeOpen, stream: 1}, nil), frame(frameHeader{typ: typeOpen, stream: 1}, nil)...), "twice"},
		{"beyond the window", append(frame(frameHeader{typ: typeOpen, stream: 1}, nil), frame(frameHeader{typ: typeData, stream: 1, length: 20 << 10}, make([]byte, 20<<10))...), "window"},
		{"data after fin", append(append(frame(frameHeader{typ: typeOpen, stream: 1}, nil), frame(frameHeader{typ: typeFin, stream: 1}, nil)...), frame(frameHeader{typ: typeData, stream: 1, length: 1}, []byte("x"))...), "after its fin"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, b := tcpPair(t)
			s := Server(b, Config{Window: 16 << 10})
			defer s.Close()
			a.Write(tt.in)
			select {
			case <-s.done:
			case <-time.After(10 * time.Second):
				t.Fatal("session still up")
			}
			if s.err == nil || !strings.Contains(s.err.Error(), tt.want) {
				t.Fatalf("ended with %v, want %q", s.err, tt.want)
			}
		})
	}
}

// TestKeepAlive: a live peer answers pings; a silent one is given up on.
func TestKeepAlive(t *testing.T) {
	c, s := sessions(t, Config{KeepAlive: 20 * time.Millisecond})
	// Both ends still up, and hearing each other's pings, ten intervals on
	// (the idle limit is three).
	start := time.Now()
	waitFor(t, func() bool {
		if c.IsClosed() || s.IsClosed() {
			t.Fatal("a session with a live peer closed")
		}
		heard := func(x *Session) bool { return time.Unix(0, x.lastRecv.Load()).Sub(start) > 10*20*time.Millisecond }
		return heard(c) && heard(s)
	})
	a, _ := tcpPair(t) // the other end never speaks
	silent := Client(a, Config{KeepAlive: 20 * time.Millisecond})
	select {
	case <-silent.done:
		if !strings.Contains(silent.err.Error(), "nothing heard") {
			t.Fatalf("ended with %v", silent.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a session with a silent peer stayed up")
	}
}

// TestShortStreamsKeepOrder: many short streams at once, each an open
// with a header, a request, a fin and a reply, as a gateway's new
// connections are: every frame must leave in the order it was written
// (data never before its stream's open, nothing after a fin), whichever
// goroutine happens to write it.
func TestShortStreamsKeepOrder(t *testing.T) {
	// A synchronous in-memory connection: each write waits for the
	// reader, which widens the moments when frames pile up behind one.
	a, b := net.Pipe()
	c, s := Client(a, Config{}), Server(b, Config{})
	t.Cleanup(func() { c.Close(); s.Close() })
	go func() {
		for {
			in, err := s.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				got, err := io.ReadAll(in)
				if err != nil {
					return
				}
				// Half the replies start with a deferred frame, as a
				// gateway's answer does.
				if len(got) == 2 {
					in.WriteDeferred(in.Header())
					in.Write(got)
				} else {
					in.Write(append(in.Header(), got...))
				}
				in.CloseWrite()
			}()
		}
	}()
	const workers, each = 8, 300
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				hdr := fmt.Appendf(nil, "%d/%d:", w, i)
				// Half the streams send their request with the open.
				req := "x"
				var st *Stream
				var err error
				if i%2 == 0 {
					req = "xy"
					st, err = c.Open(hdr, []byte(req))
				} else if st, err = c.Open(hdr, nil); err == nil {
					st.Write([]byte(req))
				}
				if err != nil {
					errs <- err
					return
				}
				st.CloseWrite()
				got, err := io.ReadAll(st)
				st.Close()
				if want := string(hdr) + req; err != nil || string(got) != want {
					errs <- fmt.Errorf("stream %s: got %q, %v", hdr, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// countingConn counts the writes to a connection.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// TestOpenWithData: a stream's first data leaves with its open in one
// write; data beyond the window follows as the peer reads.
func TestOpenWithData(t *testing.T) {
	a, b := tcpPair(t)
	cc := &countingConn{Conn: a}
	cfg := Config{Window: 32 << 10}
	c, s := Client(cc, cfg), Server(b, cfg)
	t.Cleanup(func() { c.Close(); s.Close() })

	before := cc.writes.Load()
	st, err := c.Open([]byte("hdr"), []byte("request"))
	if err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load() - before; n != 1 {
		t.Fatalf("open with data took %d writes, want 1", n)
	}
	st.CloseWrite()
	in := accept(t, s)
	if got, err := io.ReadAll(in); err != nil || string(got) != "request" || string(in.Header()) != "hdr" {
		t.Fatalf("read %q (header %q), %v", got, in.Header(), err)
	}

	// Three windows' worth: the open carries the first, the rest waits
	// for the reader's grants.
	big := bytes.Repeat([]byte("0123456789abcdef"), 6<<10)
	opened := make(chan error, 1)
	go func() {
		st, err := c.Open(nil, big)
		if err == nil {
			err = st.CloseWrite()
		}
		opened <- err
	}()
	in = accept(t, s)
	got, err := io.ReadAll(in)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read %d bytes (equal: %v), %v", len(got), bytes.Equal(got, big), err)
	}
	if err := <-opened; err != nil {
		t.Fatal(err)
	}
}

// TestWriteDeferred: a deferred frame leaves with the next frame written,
// in the same write; alone, it leaves after the delay; Close sends it.
func TestWriteDeferred(t *testing.T) {
	t.Run("with the next frame", func(t *testing.T) {
		a, b := tcpPair(t)
		cc := &countingConn{Conn: a}
		cfg := Config{DeferDelay: time.Hour}
		c, s := Client(cc, cfg), Server(b, cfg)
		t.Cleanup(func() { c.Close(); s.Close() })
		st, in := openPair(t, c, s)
		before := cc.writes.Load()
		if _, err := st.WriteDeferred([]byte("status;")); err != nil {
			t.Fatal(err)
		}
		if n := cc.writes.Load() - before; n != 0 {
			t.Fatalf("a deferred frame was written at once (%d writes)", n)
		}
		// Another stream's frame takes it along.
		other, err := c.Open([]byte("other"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := cc.writes.Load() - before; n != 1 {
			t.Fatalf("deferred frame and open took %d writes, want 1", n)
		}
		st.Write([]byte("data"))
		st.CloseWrite()
		if got, err := io.ReadAll(in); err != nil || string(got) != "status;data" {
			t.Fatalf("read %q, %v", got, err)
		}
		if in := accept(t, s); string(in.Header()) != "other" {
			t.Fatalf("second stream's header %q", in.Header())
		}
		other.Close()
	})
	t.Run("alone, after the delay", func(t *testing.T) {
		c, s := sessions(t, Config{DeferDelay: 5 * time.Millisecond})
		st, in := openPair(t, c, s)
		st.WriteDeferred([]byte("ok"))
		in.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2)
		if _, err := io.ReadFull(in, buf); err != nil || string(buf) != "ok" {
			t.Fatalf("read %q, %v", buf, err)
		}
	})
	t.Run("sent by Close", func(t *testing.T) {
		c, s := sessions(t, Config{DeferDelay: time.Hour})
		st, in := openPair(t, c, s)
		st.WriteDeferred([]byte("last words"))
		c.Close()
		got, err := io.ReadAll(in)
		if string(got) != "last words" || !errors.Is(err, errClosed) {
			t.Fatalf("read %q, %v", got, err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		c, _ := sessions(t, Config{})
		st, err := c.Open(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.WriteDeferred(make([]byte, maxDirect+1)); err == nil {
			t.Fatal("a deferred write beyond 16 KiB was taken")
		}
	})
}
