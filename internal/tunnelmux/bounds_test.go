package tunnelmux

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMaxStreams: the peer's streams beyond MaxStreams, accepted or not,
// are reset with a reason it reads, and counted; a place freed by a
// stream's end takes a new one.
func TestMaxStreams(t *testing.T) {
	var refused atomic.Int32
	cfg := Config{MaxStreams: 3, OnRefuse: func(cause string) {
		if cause == RefusedStreams {
			refused.Add(1)
		}
	}}
	c, s := sessions(t, cfg)
	var opened []*Stream
	for range 5 {
		st, err := c.Open(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		opened = append(opened, st)
	}
	for _, st := range opened[3:] {
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrReset) || !strings.Contains(err.Error(), "too many streams on this tunnel (at most 3)") {
			t.Fatalf("an open beyond 3 streams: %v", err)
		}
	}
	if n := refused.Load(); n != 2 {
		t.Fatalf("%d refusals counted, want 2", n)
	}
	first := accept(t, s)
	first.Close()
	waitFor(t, func() bool {
		st, err := c.Open(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte("x"))
		st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err = st.Read(make([]byte, 1))
		st.Close()
		return errors.Is(err, errTimeout) // not reset: admitted
	})
}

// TestBudgetCutsTheLargestUnreadStream: two sessions share a 4 MiB
// budget under 16 MiB windows. A stream nobody reads is pushed 16 MiB: the
// bytes held never pass the budget, and that stream is reset with a
// reason its writer reads; meanwhile a stream on the other session that
// is read as it arrives carries its exchanges intact.
func TestBudgetCutsTheLargestUnreadStream(t *testing.T) {
	b := NewBudget(4 << 20)
	var refused atomic.Int32
	cfg := Config{Window: 16 << 20, Budget: b, OnRefuse: func(cause string) {
		if cause == RefusedBudget {
			refused.Add(1)
		}
	}}
	c1, s1 := sessions(t, cfg)
	c2, s2 := sessions(t, cfg)
	hog, _ := openPair(t, c1, s1)
	good, goodIn := openPair(t, c2, s2)

	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // samples what is held
		defer wg.Done()
		for {
			if n := b.Buffered(); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 8<<20/16)
	hogErr := make(chan error, 1)
	go func() {
		_, err := hog.Write(bytes.Repeat(payload, 2))
		if err == nil {
			// Every byte fit in the window: the reset comes as a read.
			hog.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = hog.Read(make([]byte, 1))
		}
		hogErr <- err
	}()
	// The other stream is echoed back as it arrives: request and
	// answer, 64 KiB each, 128 times, while the hog is pushed.
	go func() { io.Copy(goodIn, goodIn); goodIn.CloseWrite() }()
	msg, back := payload[:64<<10], make([]byte, 64<<10)
	for i := range 128 {
		good.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := good.Write(msg); err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
		if _, err := io.ReadFull(good, back); err != nil || !bytes.Equal(back, msg) {
			t.Fatalf("exchange %d: %v", i, err)
		}
	}
	good.Close()
	select {
	case err := <-hogErr:
		if !errors.Is(err, ErrReset) || !strings.Contains(err.Error(), "buffer budget exhausted") {
			t.Fatalf("the unread stream's writer: %v, want a reset saying the buffer budget is exhausted", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the unread stream was not reset within 20s")
	}
	close(stop)
	wg.Wait()
	if p := peak.Load(); p > b.Limit() {
		t.Fatalf("%d bytes held at the peak, over the budget of %d", p, b.Limit())
	}
	if refused.Load() == 0 {
		t.Fatal("the reset was not counted")
	}
	// Everything is given back once the streams end.
	goodIn.Close()
	hog.Close()
	waitFor(t, func() bool { return b.Buffered() == 0 })
}
