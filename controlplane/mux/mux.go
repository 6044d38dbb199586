// Package mux serves a server's Raft transport and its gRPC API on one TCP
// port, both over mTLS. It completes the TLS handshake itself and routes the
// connection by the negotiated ALPN protocol: "strait-raft/1" to Raft
// (client SVID of a server of the site required) and "h2" to gRPC (client
// SVID optional; API callers authenticate with tokens).
//
// Goroutines: Serve runs the accept loop and one short-lived goroutine per
// handshake. Connections are handed over on unbuffered channels owned by
// the Mux; Close closes the listener and both virtual listeners.
package mux

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/credentials"

	"github.com/straitmesh/strait/trust/mtls"
)

// ALPN protocol names.
const (
	ProtoRaft = "strait-raft/1"
	ProtoGRPC = "h2"
)

// HandshakeTimeout bounds a TLS handshake on the shared port.
const HandshakeTimeout = 10 * time.Second

// Config configures a Mux.
type Config struct {
	// Listener is the bound TCP listener. Required.
	Listener net.Listener
	// Identity is the server's SVID and site bundle. Required.
	Identity *mtls.Identity
	// AuthorizeServer admits Raft peers (and is used when dialing them). Required.
	AuthorizeServer mtls.Authorizer
	// Logger; slog.Default when nil.
	Logger *slog.Logger
}

// Mux is the shared port.
type Mux struct {
	cfg     Config
	raftTLS *tls.Config
	apiTLS  *tls.Config
	dialTLS *tls.Config
	raftCh  chan net.Conn
	grpcCh  chan net.Conn
	done    chan struct{}
	once    sync.Once
}

// New returns a Mux; call Serve to accept.
func New(cfg Config) (*Mux, error) {
	if cfg.Listener == nil || cfg.Identity == nil || cfg.AuthorizeServer == nil {
		return nil, errors.New("mux: Listener, Identity and AuthorizeServer are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Mux{
		cfg:     cfg,
		raftTLS: mtls.ServerConfig(cfg.Identity, mtls.RequireClientSVID, cfg.AuthorizeServer, ProtoRaft),
		apiTLS:  mtls.ServerConfig(cfg.Identity, mtls.OptionalClientSVID, nil, ProtoGRPC),
		dialTLS: mtls.ClientConfig(cfg.Identity, cfg.AuthorizeServer, ProtoRaft),
		raftCh:  make(chan net.Conn),
		grpcCh:  make(chan net.Conn),
		done:    make(chan struct{}),
	}, nil
}

// Addr is the shared port's address.
func (m *Mux) Addr() net.Addr { return m.cfg.Listener.Addr() }

// Serve accepts until ctx ends or Close; it returns nil on shutdown.
func (m *Mux) Serve(ctx context.Context) error {
	go func() {
		select {
		case <-ctx.Done():
			m.Close()
		case <-m.done:
		}
	}()
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			if slices.Contains(h.SupportedProtos, ProtoRaft) {
				return m.raftTLS, nil
			}
			return m.apiTLS, nil
		},
	}
	var delay time.Duration
	for {
		c, err := m.cfg.Listener.Accept()
		if err != nil {
			select {
			case <-m.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		go m.handshake(tls.Server(c, tlsConf))
	}
}

func (m *Mux) handshake(c *tls.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		m.cfg.Logger.Debug("tls handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	var ch chan net.Conn
	switch c.ConnectionState().NegotiatedProtocol {
	case ProtoRaft:
		ch = m.raftCh
	case ProtoGRPC:
		ch = m.grpcCh
	default:
		m.cfg.Logger.Debug("no application protocol negotiated", "remote", c.RemoteAddr().String())
		c.Close()
		return
	}
	select {
	case ch <- c:
	case <-m.done:
		c.Close()
	}
}

// Close stops accepting. Established connections are their owners' to close.
func (m *Mux) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		err = m.cfg.Listener.Close()
	})
	return err
}

// RaftLayer is the raft.StreamLayer over this port. Closing it stops
// handing Raft connections over; the port stays open for gRPC.
func (m *Mux) RaftLayer() raft.StreamLayer {
	return &raftLayer{chanListener: newChanListener(m, m.raftCh), m: m}
}

// GRPCListener yields the connections that negotiated gRPC; serve it with
// grpc.Creds(mux.Handshaked()). Closing it leaves Raft running.
func (m *Mux) GRPCListener() net.Listener { return newChanListener(m, m.grpcCh) }

type chanListener struct {
	m      *Mux
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(m *Mux, ch chan net.Conn) *chanListener {
	return &chanListener{m: m, ch: ch, closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.m.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.m.Addr() }

type raftLayer struct {
	*chanListener
	m *Mux
}

func (r *raftLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	return tls.DialWithDialer(d, "tcp", string(addr), r.m.dialTLS)
}

// Handshaked returns gRPC transport credentials for connections whose TLS
// handshake the Mux already completed: it exposes their state as the peer's
// AuthInfo.
func Handshaked() credentials.TransportCredentials { return handshaked{} }

type handshaked struct{}

func (handshaked) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, errors.New("mux: connection is not TLS")
	}
	return c, credentials.TLSInfo{
		State:          tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

func (handshaked) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("mux: server-side credentials only")
}
func (handshaked) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}
func (h handshaked) Clone() credentials.TransportCredentials { return h }
func (handshaked) OverrideServerName(string) error           { return nil }
