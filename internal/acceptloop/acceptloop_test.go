package acceptloop_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/straitmesh/strait/internal/acceptloop"
	"github.com/straitmesh/strait/internal/acceptloop/acceptlooptest"
)

// TestRetriesTemporaryErrors: a listener that fails with EMFILE three
// times (descriptors exhausted: a fault this shared test process cannot
// cause for real without starving every other test; TestRealFDExhaustion
// causes it in a child process) keeps accepting afterwards, and each retry
// is counted.
func TestRetriesTemporaryErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	flaky := acceptlooptest.Failing(ln, 3, syscall.EMFILE)
	reg := prometheus.NewRegistry()
	al := acceptloop.Wrap(flaky, acceptloop.Config{Name: "test", Metrics: acceptloop.NewMetrics(reg)})
	defer al.Close()
	go func() {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	c, err := al.Accept()
	if err != nil {
		t.Fatalf("accept after three EMFILE: %v", err)
	}
	c.Close()
	if n := retries(t, reg, "test", "fds"); n != 3 {
		t.Fatalf("%v retries counted, want 3", n)
	}
}

// retries is the count of strait_accept_retries_total{listener, cause}.
func retries(t *testing.T, reg *prometheus.Registry, listener, cause string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		for _, m := range f.Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			if f.GetName() == "strait_accept_retries_total" && labels["listener"] == listener && labels["cause"] == cause {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestPermanentErrorEndsAccept: an error that is not temporary, or a
// closed listener, ends the loop; Close interrupts a backoff.
func TestPermanentErrorEndsAccept(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	broken := errors.New("listener broken")
	al := acceptloop.Wrap(acceptlooptest.Failing(ln, 1, broken), acceptloop.Config{Name: "test"})
	if _, err := al.Accept(); !errors.Is(err, broken) {
		t.Fatalf("accept: %v, want the permanent error", err)
	}
	// Forever EMFILE: Close ends the wait.
	al = acceptloop.Wrap(acceptlooptest.Failing(ln, 1<<30, syscall.EMFILE), acceptloop.Config{Name: "test"})
	done := make(chan error, 1)
	go func() { _, err := al.Accept(); done <- err }()
	time.AfterFunc(50*time.Millisecond, func() { al.Close() })
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("accept after close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not interrupt the backoff")
	}
}

func TestTemporary(t *testing.T) {
	for _, tt := range []struct {
		name  string
		err   error
		cause string
	}{
		{"emfile", &net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}, "fds"},
		{"enfile", syscall.ENFILE, "fds"},
		{"enobufs", syscall.ENOBUFS, "memory"},
		{"enomem", syscall.ENOMEM, "memory"},
		{"econnaborted", syscall.ECONNABORTED, "aborted"},
		{"timeout", os.ErrDeadlineExceeded, "timeout"},
		{"closed", net.ErrClosed, ""},
		{"other", errors.New("boom"), ""},
		{"einval", syscall.EINVAL, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cause, ok := acceptloop.Temporary(tt.err)
			if cause != tt.cause || ok != (tt.cause != "") {
				t.Fatalf("Temporary(%v) = %q %v, want %q", tt.err, cause, ok, tt.cause)
			}
		})
	}
}

func TestLimiter(t *testing.T) {
	l := acceptloop.NewLimiter(3, 2)
	a1, r := l.AdmitFrom("10.0.0.1")
	a2, r2 := l.AdmitFrom("10.0.0.1")
	if r != "" || r2 != "" {
		t.Fatalf("refused within limits: %q %q", r, r2)
	}
	if _, r := l.AdmitFrom("10.0.0.1"); r != acceptloop.RefusedPerSource {
		t.Fatalf("third from one source: %q", r)
	}
	b1, r := l.AdmitFrom("10.0.0.2")
	if r != "" {
		t.Fatalf("another source refused: %q", r)
	}
	if _, r := l.AdmitFrom("10.0.0.3"); r != acceptloop.RefusedTotal {
		t.Fatalf("fourth in all: %q", r)
	}
	if l.Open() != 3 {
		t.Fatalf("%d open", l.Open())
	}
	a1.Release()
	a1.Release() // twice: once counted
	if l.Open() != 2 {
		t.Fatalf("%d open after a release", l.Open())
	}
	if _, r := l.AdmitFrom("10.0.0.1"); r != "" {
		t.Fatalf("after a release: %q", r)
	}
	a2.Release()
	b1.Release()
	if _, ok := l.Admit(); !ok {
		t.Fatal("admit after releases")
	}
}

// TestRealFDExhaustion runs a child process (this test binary) whose
// descriptor limit is low and used up, so that its accept fails with a
// real EMFILE; once it sees the retry counted, it frees descriptors, and
// the connection waiting in the backlog is accepted and answered.
func TestRealFDExhaustion(t *testing.T) {
	if os.Getenv("ACCEPTLOOP_CHILD") == "1" {
		fdChild()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRealFDExhaustion$", "-test.count=1")
	cmd.Env = append(os.Environ(), "ACCEPTLOOP_CHILD=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	br := bufio.NewReader(out)
	line, err := br.ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		t.Fatalf("child: %q %v", line, err)
	}
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(got), "served after ") {
		t.Fatalf("child answered %q, %v", got, err)
	}
	t.Logf("child: %s", got)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}

// fdChild is the child of TestRealFDExhaustion.
func fdChild() {
	fail := func(err error) { fmt.Fprintln(os.Stderr, "child:", err); os.Exit(2) }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	reg := prometheus.NewRegistry()
	m := acceptloop.NewMetrics(reg)
	al := acceptloop.Wrap(ln, acceptloop.Config{Name: "child", Metrics: m})
	// Use up every descriptor under a low limit.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	lim.Cur = 64
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	var spare []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				fail(err)
			}
			break
		}
		spare = append(spare, f)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	var retries atomic.Int64
	go func() {
		// Free the descriptors once accept has failed for real.
		for range 3000 {
			time.Sleep(10 * time.Millisecond)
			fams, _ := reg.Gather()
			for _, f := range fams {
				for _, mm := range f.Metric {
					retries.Store(int64(mm.GetCounter().GetValue()))
				}
			}
			if retries.Load() > 0 {
				for _, f := range spare {
					f.Close()
				}
				return
			}
		}
		fail(errors.New("accept never failed with the descriptors used up"))
	}()
	c, err := al.Accept()
	if err != nil {
		fail(err)
	}
	fmt.Fprintf(c, "served after %d accept retries", retries.Load())
	c.Close()
	os.Exit(0)
}

// TestListenerLimits: with Limits, a connection over a source's share is
// closed at accept and counted, and Accept goes on to the next; closing
// an admitted connection frees its place.
func TestListenerLimits(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	al := acceptloop.Wrap(ln, acceptloop.Config{Name: "test", Metrics: acceptloop.NewMetrics(reg), Limits: acceptloop.NewLimiter(2, 1)})
	defer al.Close()
	dial := func(local string) net.Conn {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	accept := func() net.Conn {
		t.Helper()
		c, err := al.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	dial("127.0.0.2")
	first := accept()
	over := dial("127.0.0.2") // refused inside the next Accept
	dial("127.0.0.3")
	second := accept()
	if got := second.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.3" {
		t.Fatalf("admitted %s, want 127.0.0.3 (127.0.0.2 is over its share)", got)
	}
	over.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(over); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the connection over the limit was not closed")
	}
	fams, _ := reg.Gather()
	found := false
	for _, f := range fams {
		if f.GetName() == "strait_accept_refused_total" && f.Metric[0].GetCounter().GetValue() == 1 {
			found = true
		}
	}
	if !found {
		t.Fatal("strait_accept_refused_total is not 1")
	}
	first.Close()
	second.Close()
	dial("127.0.0.2")
	accept().Close()
}
