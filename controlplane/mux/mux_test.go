package mux

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/internal/acceptloop/acceptlooptest"
	"github.com/straitmesh/strait/internal/passthrough"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/mtls"
)

var td = spiffeid.RequireTrustDomainFromString("site.strait")

// serverIdentity is a server SVID of td from a fresh CA.
func serverIdentity(t *testing.T) *mtls.Identity {
	t.Helper()
	c, err := ca.Generate(td, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	cert, err := c.SignCSR(spiffeid.RequireFromPath(td, "/strait/server/s1"), csr, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ident := mtls.NewIdentity(x509bundle.FromX509Authorities(td, []*x509.Certificate{c.Certificate()}), nil)
	if err := ident.SetSVID([]*x509.Certificate{cert}, key); err != nil {
		t.Fatal(err)
	}
	return ident
}

// startMux serves a Mux on ln (wrapped by wrap when set) until the test
// ends; Serve's result arrives on the channel returned.
func startMux(t *testing.T, cfg Config, wrap func(net.Listener) net.Listener) (*Mux, *prometheus.Registry, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		ln = wrap(ln)
	}
	reg := prometheus.NewRegistry()
	cfg.Listener, cfg.Identity, cfg.Registerer = ln, serverIdentity(t), reg
	cfg.AuthorizeServer = func(spiffeid.ID) error { return nil }
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, stopped := make(chan error, 1), make(chan struct{})
	go func() { done <- m.Serve(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	return m, reg, done
}

// dialAPI connects from local (an address of 127.0.0.0/8) and, with a
// preamble when via is valid, completes TLS offering protos.
func dialAPI(addr string, local string, via netip.AddrPort, protos ...string) (*tls.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if via.IsValid() {
		if _, err := raw.Write(passthrough.Append(nil, via)); err != nil {
			raw.Close()
			return nil, err
		}
	}
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: protos, MinVersion: tls.VersionTLS13})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	// A TLS 1.3 server refuses after the client's Finished: read to see.
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		raw.Close()
		return nil, err
	}
	c.SetReadDeadline(time.Time{})
	return c, nil
}

// acceptWithin accepts one connection from l, or fails the test.
func acceptWithin(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	got := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			got <- c
		}
	}()
	select {
	case c := <-got:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection handed over within 10s")
		return nil
	}
}

// TestServeSurvivesTemporaryAcceptErrors: the port's listener fails with
// EMFILE three times (descriptors exhausted: a fault this shared test
// process cannot cause for real; internal/acceptloop's
// TestRealFDExhaustion causes it in a child process). Serve keeps
// running and the next client is served. Before, Serve returned the
// error and the server exited.
func TestServeSurvivesTemporaryAcceptErrors(t *testing.T) {
	var flaky *acceptlooptest.Listener
	m, _, done := startMux(t, Config{}, func(ln net.Listener) net.Listener {
		flaky = acceptlooptest.Failing(ln, 3, syscall.EMFILE)
		return flaky
	})
	grpcL := m.GRPCListener()
	c, err := dialAPI(m.Addr().String(), "127.0.0.1", netip.AddrPort{}, ProtoGRPC)
	if err != nil {
		select {
		case err := <-done:
			t.Fatalf("Serve returned %v after a temporary accept error", err)
		default:
		}
		t.Fatal(err)
	}
	defer c.Close()
	acceptWithin(t, grpcL).Close()
	if n := flaky.Failed.Load(); n != 3 {
		t.Fatalf("%d accept failures, want 3", n)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v", err)
	default:
	}
}

// TestServeEndsOnPermanentError: a listener broken for good ends Serve
// with its error (the server then stops: nothing could reach it).
func TestServeEndsOnPermanentError(t *testing.T) {
	broken := errors.New("listener broken")
	_, _, done := startMux(t, Config{}, func(ln net.Listener) net.Listener {
		return acceptlooptest.Failing(ln, 1, broken)
	})
	select {
	case err := <-done:
		if !errors.Is(err, broken) {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running on a broken listener")
	}
}

// TestConnectionLimits: per source and in total, the connection over the
// limit is closed before its handshake and counted; a connection passed
// through a gateway counts against the client's address, not the
// gateway's; closing a connection frees its place.
func TestConnectionLimits(t *testing.T) {
	m, reg, _ := startMux(t, Config{MaxConnections: 5, MaxConnectionsPerSource: 2}, nil)
	grpcL := m.GRPCListener()
	addr := m.Addr().String()
	var held []net.Conn
	open := func(local string, via netip.AddrPort) {
		t.Helper()
		c, err := dialAPI(addr, local, via, ProtoGRPC)
		if err != nil {
			t.Fatalf("from %s (via %v): %v", local, via, err)
		}
		t.Cleanup(func() { c.Close() })
		held = append(held, acceptWithin(t, grpcL))
	}
	refused := func(local string, via netip.AddrPort, cause string, want float64) {
		t.Helper()
		if c, err := dialAPI(addr, local, via, ProtoGRPC); err == nil {
			c.Close()
			t.Fatalf("from %s (via %v): admitted over the limit", local, via)
		}
		if n := testutil.ToFloat64(m.refused.WithLabelValues(cause)); n != want {
			t.Fatalf("refused %s: %v, want %v", cause, n, want)
		}
	}
	open("127.0.0.2", netip.AddrPort{})
	open("127.0.0.2", netip.AddrPort{})
	refused("127.0.0.2", netip.AddrPort{}, "max_connections_per_source", 1)
	// Through gateways at 127.0.0.7 and .8: the client's address counts.
	client := netip.MustParseAddrPort("198.51.100.7:4000")
	open("127.0.0.7", client)
	open("127.0.0.8", client)
	refused("127.0.0.4", client, "max_connections_per_source", 2)
	open("127.0.0.5", netip.AddrPort{})
	refused("127.0.0.6", netip.AddrPort{}, "max_connections", 1)
	if n := m.limits.Open(); n != 5 {
		t.Fatalf("%d open, want 5", n)
	}
	held[0].Close()
	waitFor(t, func() error {
		if m.limits.Open() != 4 {
			return fmt.Errorf("%d open", m.limits.Open())
		}
		return nil
	})
	open("127.0.0.6", netip.AddrPort{})
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "strait_api_open_connections" {
			if n := f.Metric[0].GetGauge().GetValue(); n != 5 {
				t.Fatalf("strait_api_open_connections %v, want 5", n)
			}
		}
	}
}

// TestPassthroughOrigin: a connection with a gateway's preamble is marked
// ViaGateway, with the client's address, in its gRPC AuthInfo, and can
// never negotiate Raft; a direct one is not marked and can.
func TestPassthroughOrigin(t *testing.T) {
	m, _, _ := startMux(t, Config{}, nil)
	addr := m.Addr().String()
	grpcL := m.GRPCListener()
	client := netip.MustParseAddrPort("[2001:db8::1]:5000")

	c, err := dialAPI(addr, "127.0.0.1", client, ProtoGRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, ai, err := Handshaked().ServerHandshake(acceptWithin(t, grpcL))
	if err != nil {
		t.Fatal(err)
	}
	if info := ai.(AuthInfo); !info.ViaGateway || info.Client != client {
		t.Fatalf("passthrough connection: %+v", info)
	}

	if c, err := dialAPI(addr, "127.0.0.1", client, ProtoRaft); err == nil {
		c.Close()
		t.Fatal("Raft negotiated through a gateway's passthrough")
	}

	d, err := dialAPI(addr, "127.0.0.1", netip.AddrPort{}, ProtoGRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, ai, _ = Handshaked().ServerHandshake(acceptWithin(t, grpcL))
	if info := ai.(AuthInfo); info.ViaGateway {
		t.Fatalf("direct connection marked as passed through: %+v", info)
	}
	// Raft directly: the handshake asks for a server SVID, which this
	// client lacks, so it is refused, but by the Raft configuration.
	r, err := dialAPI(addr, "127.0.0.1", netip.AddrPort{}, ProtoRaft)
	if err == nil {
		r.Close()
		t.Fatal("Raft without a client SVID")
	}
	// A malformed preamble is dropped and counted.
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("\x00not-a-preamble-at-all"))
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(raw); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("malformed preamble: connection not closed")
	}
	raw.Close()
	if n := testutil.ToFloat64(m.refused.WithLabelValues("preamble")); n != 1 {
		t.Fatalf("preamble refusals: %v", n)
	}
}

// waitFor polls f until it succeeds, for at most 10s.
func waitFor(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSilentConnectionsCountAgainstTheirSource: connections that never
// send a byte hold only their source's share, from the moment they are
// accepted, so one address cannot take every place of the port.
func TestSilentConnectionsCountAgainstTheirSource(t *testing.T) {
	m, _, _ := startMux(t, Config{MaxConnections: 10, MaxConnectionsPerSource: 2}, nil)
	addr := m.Addr().String()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}}
	for range 2 {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	waitFor(t, func() error {
		if n := m.limits.Open(); n != 2 {
			return fmt.Errorf("%d open, want the 2 silent ones", n)
		}
		return nil
	})
	if c, err := dialAPI(addr, "127.0.0.9", netip.AddrPort{}, ProtoGRPC); err == nil {
		c.Close()
		t.Fatal("a third connection from a source holding two silent ones was admitted")
	}
	if n := testutil.ToFloat64(m.refused.WithLabelValues("max_connections_per_source")); n != 1 {
		t.Fatalf("refused per source: %v, want 1", n)
	}
	if c, err := dialAPI(addr, "127.0.0.10", netip.AddrPort{}, ProtoGRPC); err != nil {
		t.Fatalf("another source: %v", err)
	} else {
		c.Close()
	}
}
