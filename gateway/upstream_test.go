package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/internal/tunnelmux"
)

// fakePeer is the peer's side of a real tunnel (tunnelmux over loopback
// TCP) whose ingress is scripted: answer(n) is the status for the n-th
// stream (from 0). Scripting the answer is the fake: it stands for a
// gateway that cannot reach its instance, which a test cannot cause on one
// of two real gateways sharing one configuration. Streams answered OK
// echo; every stream's bytes are recorded.
type fakePeer struct {
	client *tunnelmux.Session
	mu     sync.Mutex
	seen   [][]byte
}

func newFakePeer(t *testing.T, answer func(n int) byte) *fakePeer {
	fp := &fakePeer{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		sess := tunnelmux.Server(c, tunnelmux.Config{})
		t.Cleanup(func() { sess.Close() })
		p := 0
		for {
			st, err := sess.Accept()
			if err != nil {
				return
			}
			n := p
			p++
			go func() {
				defer st.Close()
				code := answer(n)
				if code != statusOK {
					// Read what arrived with the open (the client
					// half-closes after its bytes) before refusing.
					st.SetReadDeadline(time.Now().Add(10 * time.Second))
					b, _ := io.ReadAll(st)
					fp.record(n, b)
					writeStatus(st, code, "scripted")
					return
				}
				writeStatus(st, statusOK, "")
				var got bytes.Buffer
				io.Copy(io.MultiWriter(st, &got), st)
				fp.record(n, got.Bytes())
				st.CloseWrite()
			}()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fp.client = tunnelmux.Client(c, tunnelmux.Config{})
	t.Cleanup(func() { fp.client.Close() })
	return fp
}

func (f *fakePeer) record(n int, b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.seen) <= n {
		f.seen = append(f.seen, nil)
	}
	f.seen[n] = bytes.Clone(b)
}

// run carries one client connection, sending data then half-closing, and
// returns what the client got back and the upstream's failure. With
// ready, the client sends before the stream opens (and start takes the
// bytes along with the open), else after.
func (f *fakePeer) run(t *testing.T, p *pool, data []byte, ready bool) (got []byte, failure error) {
	t.Helper()
	cl, gw := tcpPairGateway(t)
	if ready {
		cl.Write(data)
		cl.(*net.TCPConn).CloseWrite()
		waitReadable(t, gw, len(data))
	}
	u := newUpstream(context.Background(), gw, p, 5*time.Second, func(_ context.Context, _ string, early []byte) (net.Conn, error) {
		return f.client.Open(header{SNI: "test"}.encode(), early)
	})
	if err := u.start(); err != nil {
		t.Fatal(err)
	}
	if ready && u.primed != len(data) {
		t.Fatalf("start took %d bytes along with the open, want all %d", u.primed, len(data))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(gw, u)
		u.release()
		gw.Close()
	}()
	if !ready {
		cl.Write(data)
		cl.(*net.TCPConn).CloseWrite()
	}
	cl.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ = io.ReadAll(cl)
	<-done
	return got, u.failure()
}

func tcpPairGateway(t *testing.T) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// waitReadable waits (bounded) until n bytes wait to be read on c.
func waitReadable(t *testing.T, c net.Conn, n int) {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		var queued int
		raw.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if queued < n {
			return fmt.Errorf("%d of %d bytes arrived", queued, n)
		}
		return nil
	})
}

func twoGateways() *pool {
	p := newPool(3, time.Minute, 0)
	p.set([]string{"gw-1:443", "gw-2:443"})
	return p
}

func idle(t *testing.T, p *pool) {
	t.Helper()
	for _, e := range p.order {
		if e.active != 0 {
			t.Fatalf("%s still has %d reservations", e.addr, e.active)
		}
	}
}

// TestEarlyBytesMoveToAnotherGateway: the client's first bytes leave with
// the stream's open, before any answer; the first gateway cannot serve
// the stream, and the same bytes reach the client's service through the
// second, once.
func TestEarlyBytesMoveToAnotherGateway(t *testing.T) {
	for _, ready := range []bool{false, true} {
		t.Run(map[bool]string{false: "sent after the open", true: "waiting at the open"}[ready], func(t *testing.T) {
			fp := newFakePeer(t, func(n int) byte {
				if n == 0 {
					return statusUnavailable
				}
				return statusOK
			})
			p := twoGateways()
			data := []byte("GET /ledger HTTP/1.1\r\n\r\n")
			got, err := fp.run(t, p, data, ready)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("client got %q, %v; want its bytes echoed once", got, err)
			}
			fp.mu.Lock()
			defer fp.mu.Unlock()
			if len(fp.seen) != 2 || !bytes.Equal(fp.seen[0], data) || !bytes.Equal(fp.seen[1], data) {
				t.Fatalf("gateways saw %q; want the bytes at both, sent before the first answered", fp.seen)
			}
			idle(t, p)
		})
	}
}

// TestRefusalIsFinal: a refusal (intentions) is not retried elsewhere,
// and the client's connection ends with nothing.
func TestRefusalIsFinal(t *testing.T) {
	fp := newFakePeer(t, func(int) byte { return statusDenied })
	p := twoGateways()
	got, err := fp.run(t, p, []byte("hello"), false)
	var perm *permanent
	if len(got) != 0 || !errors.As(err, &perm) {
		t.Fatalf("client got %q, %v; want nothing and a permanent refusal", got, err)
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if len(fp.seen) != 1 {
		t.Fatalf("%d streams opened for a refusal, want 1", len(fp.seen))
	}
	idle(t, p)
}

// TestNoGatewayCanServe: every gateway unavailable: the connection fails
// after each was tried once, and the gateways count a failure each.
func TestNoGatewayCanServe(t *testing.T) {
	fp := newFakePeer(t, func(int) byte { return statusUnavailable })
	p := twoGateways()
	got, err := fp.run(t, p, []byte("hello"), false)
	var perm *permanent
	if len(got) != 0 || err == nil || errors.As(err, &perm) {
		t.Fatalf("client got %q, %v; want nothing and a retryable failure", got, err)
	}
	fp.mu.Lock()
	n := len(fp.seen)
	fp.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d streams opened, want one per gateway", n)
	}
	for _, e := range p.order {
		if e.fails != 1 {
			t.Fatalf("%s counted %d failures, want 1", e.addr, e.fails)
		}
	}
	idle(t, p)
}

// TestAtMostThreeGateways: with four gateways that cannot serve, the
// connection tries three in all (the first, then two more), not three
// after the first.
func TestAtMostThreeGateways(t *testing.T) {
	fp := newFakePeer(t, func(int) byte { return statusUnavailable })
	p := newPool(3, time.Minute, 0)
	p.set([]string{"gw-1:443", "gw-2:443", "gw-3:443", "gw-4:443"})
	if _, err := fp.run(t, p, []byte("hello"), false); err == nil {
		t.Fatal("a connection no gateway could serve succeeded")
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if len(fp.seen) != 3 {
		t.Fatalf("%d gateways tried, want 3", len(fp.seen))
	}
	idle(t, p)
}
