package controlplane_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/mux"
	"github.com/straitmesh/strait/internal/acceptloop/acceptlooptest"
)

// TestServerSurvivesEMFILE (H1): the server port's listener fails with
// EMFILE three times as the server starts (descriptors exhausted: a fault
// a shared test process cannot cause for real; internal/acceptloop's
// TestRealFDExhaustion does, in a child process). The server retries and
// serves; before, Run ended with "serve: ... too many open files".
func TestServerSurvivesEMFILE(t *testing.T) {
	var flaky *acceptlooptest.Listener
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "fds", InMemoryRaft: true, Tweak: func(cfg *controlplane.Config) {
		flaky = acceptlooptest.Failing(cfg.Listener, 3, syscall.EMFILE)
		cfg.Listener = flaky
	}})
	if _, err := c.Client(0).Operator.Status(controlplanetest.Ctx(t), &apipb.StatusRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := flaky.Failed.Load(); n != 3 {
		t.Fatalf("%d accept failures, want 3", n)
	}
}

// TestIdleAPIConnectionsClosed (H1b): connections that complete TLS and
// the HTTP/2 preface on the API port, then make no call, are closed after
// api_idle_timeout (here 300ms); before, they stayed open for good.
func TestIdleAPIConnectionsClosed(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "idle", InMemoryRaft: true, Tweak: func(cfg *controlplane.Config) {
		cfg.APIIdleTimeout = 300 * time.Millisecond
	}})
	addr := c.Nodes[0].Addr
	const n = 5
	conns := make([]*tls.Conn, n)
	for i := range conns {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{mux.ProtoGRPC}, MinVersion: tls.VersionTLS13})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		// The client preface and an empty SETTINGS frame, then silence.
		if _, err := conn.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)); err != nil {
			t.Fatal(err)
		}
		conns[i] = conn
	}
	errs := make(chan error, n)
	for _, conn := range conns {
		go func() {
			// The server's SETTINGS, then (once idle) GOAWAY and the close.
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err := io.Copy(io.Discard, conn)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = errors.New("an idle API connection was still open after 30s")
			} else {
				err = nil
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
