// Package mux serves a server's Raft transport and its gRPC API on one TCP
// port, both over mTLS. It completes the TLS handshake itself and routes the
// connection by the negotiated ALPN protocol: "strait-raft/1" to Raft
// (client SVID of a server of the site required) and "h2" to gRPC (client
// SVID optional; API callers authenticate with tokens).
//
// Bounds: at most MaxConnections connections are open on the port, at most
// MaxConnectionsPerSource of them from one address; a connection over
// either is closed at once and counted. The handshake (the passthrough
// preamble, if any, and TLS) must finish within HandshakeTimeout. Idle
// gRPC connections are the gRPC server's to close (api.Config's
// keepalive settings). Temporary accept errors (descriptors exhausted for
// a moment) are retried with backoff (internal/acceptloop): they never end
// Serve.
//
// Connections a site's gateway passes through from the WAN start with a
// preamble (internal/passthrough): they may negotiate only gRPC, never
// Raft, they count against the share of the address the gateway saw, and
// their AuthInfo says ViaGateway, so the API serves them only the
// federation methods.
//
// Goroutines: Serve runs the accept loop and one short-lived goroutine per
// handshake. Connections are handed over on unbuffered channels owned by
// the Mux; Close closes the listener and both virtual listeners.
package mux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/credentials"

	"github.com/straitmesh/strait/internal/acceptloop"
	"github.com/straitmesh/strait/internal/passthrough"
	"github.com/straitmesh/strait/trust/mtls"
)

// ALPN protocol names.
const (
	ProtoRaft = "strait-raft/1"
	ProtoGRPC = mtls.ProtoGRPC
)

// HandshakeTimeout bounds a TLS handshake on the shared port by default.
const HandshakeTimeout = 10 * time.Second

// Defaults of the connection limits.
const (
	DefaultMaxConnections          = 8192
	DefaultMaxConnectionsPerSource = 512
)

// Config configures a Mux.
type Config struct {
	// Listener is the bound TCP listener. Required.
	Listener net.Listener
	// Identity is the server's SVID and site bundle. Required.
	Identity *mtls.Identity
	// AuthorizeServer admits Raft peers (and is used when dialing them). Required.
	AuthorizeServer mtls.Authorizer
	// HandshakeTimeout bounds the preamble and the TLS handshake of a new
	// connection; HandshakeTimeout (10s) when zero.
	HandshakeTimeout time.Duration
	// MaxConnections bounds the connections open on the port (Raft, gRPC
	// and those still handshaking); DefaultMaxConnections when zero.
	MaxConnections int
	// MaxConnectionsPerSource bounds those from one IP address (for a
	// gateway's passthrough, the address the gateway saw);
	// DefaultMaxConnectionsPerSource when zero.
	MaxConnectionsPerSource int
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Registerer receives the port's metrics; none when nil.
	Registerer prometheus.Registerer
	// AcceptMetrics counts accept retries; not counted when nil.
	AcceptMetrics *acceptloop.Metrics
}

// Mux is the shared port.
type Mux struct {
	cfg     Config
	ln      *acceptloop.Listener
	limits  *acceptloop.Limiter
	refused *prometheus.CounterVec
	warn    rate.Sometimes // refusals are logged at most this often
	tlsConf *tls.Config
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
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = HandshakeTimeout
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.MaxConnectionsPerSource == 0 {
		cfg.MaxConnectionsPerSource = DefaultMaxConnectionsPerSource
	}
	if cfg.HandshakeTimeout < 0 || cfg.MaxConnections < 0 || cfg.MaxConnectionsPerSource < 0 {
		return nil, errors.New("mux: negative handshake timeout or connection limit")
	}
	m := &Mux{
		cfg:     cfg,
		ln:      acceptloop.Wrap(cfg.Listener, acceptloop.Config{Name: "api", Logger: cfg.Logger, Metrics: cfg.AcceptMetrics}),
		limits:  acceptloop.NewLimiter(cfg.MaxConnections, cfg.MaxConnectionsPerSource),
		warn:    rate.Sometimes{Interval: 10 * time.Second},
		raftTLS: mtls.ServerConfig(cfg.Identity, mtls.RequireClientSVID, cfg.AuthorizeServer, ProtoRaft),
		apiTLS:  mtls.ServerConfig(cfg.Identity, mtls.OptionalClientSVID, nil, ProtoGRPC),
		dialTLS: mtls.ClientConfig(cfg.Identity, cfg.AuthorizeServer, ProtoRaft),
		raftCh:  make(chan net.Conn),
		grpcCh:  make(chan net.Conn),
		done:    make(chan struct{}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strait_api_connections_refused_total",
			Help: "Connections to the server port closed unserved, by cause (max_connections, max_connections_per_source, preamble: a malformed passthrough preamble).",
		}, []string{"cause"}),
	}
	m.tlsConf = &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			// Raft only from the site's own network: a connection a
			// gateway passed through from the WAN is offered gRPC alone.
			if c, ok := h.Conn.(*conn); ok && c.viaGateway {
				return m.apiTLS, nil
			}
			if slices.Contains(h.SupportedProtos, ProtoRaft) {
				return m.raftTLS, nil
			}
			return m.apiTLS, nil
		},
	}
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "strait_api_open_connections",
		Help: "Connections open on the server port (Raft, gRPC and those still handshaking).",
	}, func() float64 { return float64(m.limits.Open()) })
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(m.refused, open)
	}
	return m, nil
}

// Addr is the shared port's address.
func (m *Mux) Addr() net.Addr { return m.cfg.Listener.Addr() }

// Serve accepts until ctx ends or Close; it returns nil on shutdown, and
// an error only when the listener fails for good.
func (m *Mux) Serve(ctx context.Context) error {
	go func() {
		select {
		case <-ctx.Done():
			m.Close()
		case <-m.done:
		}
	}()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return nil
			default:
			}
			return fmt.Errorf("accept: %w", err)
		}
		// Counted against its source at once: a source that opens
		// connections and stays silent holds only its own share.
		slot, refused := m.limits.AdmitFrom(acceptloop.SourceIP(c))
		if slot == nil {
			m.refuse(c, refused, netip.AddrPort{})
			continue
		}
		go m.handshake(c, slot)
	}
}

// refuse closes a connection over a limit, and counts and logs it.
func (m *Mux) refuse(c net.Conn, cause string, client netip.AddrPort) {
	c.Close()
	m.refused.WithLabelValues(cause).Inc()
	m.warn.Do(func() {
		m.cfg.Logger.Warn("connection refused on the server port", "cause", cause, "remote", c.RemoteAddr().String(),
			"via_gateway_from", client, "open", m.limits.Open(),
			"max_connections", m.cfg.MaxConnections, "max_connections_per_source", m.cfg.MaxConnectionsPerSource)
	})
}

// conn is a connection of the port: its passthrough origin, and the first
// byte read to look for a preamble when there was none.
type conn struct {
	net.Conn
	slot       *acceptloop.Slot
	viaGateway bool
	client     netip.AddrPort // the address the gateway saw
	first      []byte         // not yet returned by Read
}

func (c *conn) Read(b []byte) (int, error) {
	if len(c.first) > 0 && len(b) > 0 {
		n := copy(b, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.slot.Release()
	return err
}

func (m *Mux) handshake(raw net.Conn, slot *acceptloop.Slot) {
	// One deadline for the preamble and the TLS handshake together.
	raw.SetDeadline(time.Now().Add(m.cfg.HandshakeTimeout))
	client, via, first, err := passthrough.Read(raw)
	if err != nil {
		raw.Close()
		slot.Release()
		if errors.Is(err, passthrough.ErrMalformed) {
			m.refused.WithLabelValues("preamble").Inc()
		}
		m.cfg.Logger.Debug("connection dropped before its handshake", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	c := &conn{Conn: raw, slot: slot, viaGateway: via, client: client}
	ok := true
	if via {
		// A gateway relays many clients: count the one it saw instead.
		ok = slot.Rebind(client.Addr().Unmap().String())
	} else {
		c.first = []byte{first}
	}
	if !ok {
		slot.Release()
		m.refuse(raw, acceptloop.RefusedPerSource, client)
		return
	}
	tc := tls.Server(c, m.tlsConf)
	if err := tc.Handshake(); err != nil {
		m.cfg.Logger.Debug("tls handshake failed", "remote", raw.RemoteAddr().String(), "via_gateway", via, "err", err)
		tc.Close()
		return
	}
	raw.SetDeadline(time.Time{})
	var ch chan net.Conn
	switch proto := tc.ConnectionState().NegotiatedProtocol; {
	case proto == ProtoRaft && !via:
		ch = m.raftCh
	case proto == ProtoGRPC:
		ch = m.grpcCh
	default:
		m.cfg.Logger.Debug("no application protocol negotiated", "remote", raw.RemoteAddr().String())
		tc.Close()
		return
	}
	select {
	case ch <- tc:
	case <-m.done:
		tc.Close()
	}
}

// Close stops accepting. Established connections are their owners' to close.
func (m *Mux) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		err = m.ln.Close()
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
// handshake the Mux already completed: it exposes their state, and their
// origin, as the peer's AuthInfo (an AuthInfo).
func Handshaked() credentials.TransportCredentials { return handshaked{} }

// AuthInfo is what gRPC handlers learn of a connection of the port.
type AuthInfo struct {
	credentials.TLSInfo
	// ViaGateway: a gateway of the site passed the connection through
	// from the WAN (SNI servers.<td>); Client is the address it came from.
	ViaGateway bool
	Client     netip.AddrPort
}

type handshaked struct{}

func (handshaked) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, errors.New("mux: connection is not TLS")
	}
	info := AuthInfo{TLSInfo: credentials.TLSInfo{
		State:          tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}}
	if mc, ok := tc.NetConn().(*conn); ok {
		info.ViaGateway, info.Client = mc.viaGateway, mc.client
	}
	return c, info, nil
}

func (handshaked) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("mux: server-side credentials only")
}
func (handshaked) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}
func (h handshaked) Clone() credentials.TransportCredentials { return h }
func (handshaked) OverrideServerName(string) error           { return nil }
