// Package acceptlooptest has fakes for accept-loop tests: a listener
// whose Accept fails a given number of times, as it would when the
// process's file descriptors run out (a fault a shared test process cannot
// cause for real without starving everything else in it), or fails for
// good. For tests only; safe for concurrent use.
package acceptlooptest

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
)

// Listener fails its first n Accepts with an error, then accepts from the
// real listener beneath; Fail makes it fail every Accept from then on.
type Listener struct {
	net.Listener
	left   atomic.Int64
	err    error
	broken atomic.Pointer[error]
	// Failed counts the Accepts that failed.
	Failed atomic.Int64
}

// Failing wraps ln: its first n Accepts return err (a syscall.Errno is
// wrapped as the runtime would: *net.OpError around *os.SyscallError).
func Failing(ln net.Listener, n int, err error) *Listener {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		err = &net.OpError{Op: "accept", Net: "tcp", Addr: ln.Addr(), Err: os.NewSyscallError("accept4", errno)}
	}
	l := &Listener{Listener: ln, err: err}
	l.left.Store(int64(n))
	return l
}

// Fail makes every later Accept fail with err.
func (l *Listener) Fail(err error) { l.broken.Store(&err) }

// Accept fails as configured, or accepts.
func (l *Listener) Accept() (net.Conn, error) {
	if p := l.broken.Load(); p != nil {
		l.Failed.Add(1)
		return nil, *p
	}
	if l.left.Add(-1) >= 0 {
		l.Failed.Add(1)
		return nil, l.err
	}
	return l.Listener.Accept()
}
