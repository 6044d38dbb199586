package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/cloud/aws"
	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/mux"
	"github.com/straitmesh/strait/federation/replication"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust/keywrap"
)

// Config configures a Server. Zero values are replaced by the defaults
// documented on each field.
type Config struct {
	// Site is the site's name, a DNS label. Required when bootstrapping;
	// when joining or restarting it must match the site's if set.
	Site string
	// TrustDomain of the site; "<site>.strait" when empty. Used at bootstrap.
	TrustDomain string
	// NodeID is this server's name, a DNS label; the host name when empty.
	NodeID string
	// Dev runs a single in-memory server: nothing is written to disk and
	// the site is bootstrapped on start. DataDir, Bootstrap and Join are ignored.
	Dev bool
	// DataDir holds the Raft log, snapshots and this server's identity.
	// Required unless Dev.
	DataDir string
	// BindAddr is the TCP address for Raft and the API (one port, mTLS);
	// "127.0.0.1:7400" when empty. Ignored when Listener is set.
	BindAddr string
	// Listener, when set, is used instead of binding BindAddr (tests bind port 0).
	Listener net.Listener
	// APIMaxConnections bounds the connections open on the server port
	// (Raft, API and those still handshaking); more are closed at once.
	// 8192 when zero.
	APIMaxConnections int
	// APIMaxConnectionsPerSource bounds those from one IP address (for a
	// gateway's passthrough from the WAN, the address the gateway saw).
	// 512 when zero; at most APIMaxConnections.
	APIMaxConnectionsPerSource int
	// APIIdleTimeout closes an API connection on which no call has been
	// in progress for this long (clients reconnect when they need to).
	// 5m when zero.
	APIIdleTimeout time.Duration
	// AdvertiseAddr is the address other servers and clients use; the
	// bound address when empty. It must be a specific IP, not 0.0.0.0.
	AdvertiseAddr string
	// MetricsAddr serves Prometheus /metrics over HTTP; disabled when empty.
	MetricsAddr string
	// DNSAddr serves mesh DNS (UDP and TCP); disabled when empty (and
	// DNSPacketConn is nil).
	DNSAddr string
	// DNSPacketConn and DNSListener, when set, are used instead of binding
	// DNSAddr (tests bind port 0).
	DNSPacketConn net.PacketConn
	DNSListener   net.Listener
	// DNSDomain is the mesh domain; "mesh." when empty.
	DNSDomain string
	// DNSUpstreams answer names outside the mesh domain; refused when empty.
	DNSUpstreams []string
	// DNSAllowRecursionFrom lists the client networks (CIDRs) whose names
	// outside the mesh domain are forwarded to DNSUpstreams; others get
	// REFUSED for them (mesh names are answered for everyone). When empty:
	// loopback and the private ranges (10.0.0.0/8, 172.16.0.0/12,
	// 192.168.0.0/16, 100.64.0.0/10, fc00::/7) that hold an address of this
	// host's interfaces (dns.DefaultAllowRecursionFrom).
	DNSAllowRecursionFrom []string
	// DNSTTL of mesh answers; 5s when zero.
	DNSTTL time.Duration
	// DNSPeerOrder is the failover preference of <svc>.<ns>.<domain> among
	// peers (local names); peers not listed follow, by name.
	DNSPeerOrder []string
	// BundleAddr serves the site's SPIFFE bundle endpoint over HTTPS;
	// disabled when empty (and BundleListener is nil).
	BundleAddr string
	// BundleListener, when set, is used instead of binding BundleAddr.
	BundleListener net.Listener
	// BundleRefreshHint is the spiffe_refresh_hint published; when zero,
	// 5m or a third of CAPropagationDelay, whichever is shorter. It must
	// be at most a third of CAPropagationDelay.
	BundleRefreshHint time.Duration
	// BundleWebCertFile and BundleWebKeyFile, when set, serve the bundle
	// endpoint with this Web PKI certificate (https_web profile) instead of
	// the endpoint SVID (https_spiffe).
	BundleWebCertFile, BundleWebKeyFile string
	// Bootstrap creates the site (CA, trust domain, management token) on
	// the first start of the first server.
	Bootstrap bool
	// Join lists addresses of existing servers to join on first start.
	Join []string
	// JoinToken is the server token from `strait token create --kind server`.
	JoinToken string
	// KEKFile is the key-encryption key for the CA key at rest (0600);
	// "<DataDir>/kek" when empty. Created at bootstrap and join if missing.
	KEKFile string
	// KeyService, when set, keeps the KEK file as an envelope: the KEK
	// sealed under a data key that this service (a cloud KMS) encrypts,
	// bound to the site by an encryption context. KeyServiceName names it
	// in the envelope ("aws-kms").
	KeyService     keywrap.KeyService
	KeyServiceName string
	// DataKeyRotation is the age at which a server re-seals its KEK under
	// a new data key, checked at start; never when zero.
	DataKeyRotation time.Duration
	// RetryJoin lists servers to join on first start, as addresses or
	// cloud discovery specs ("provider=aws tag_key=... tag_value=..."),
	// resolved again and retried until one admits this server. AWS
	// configures discovery.
	RetryJoin []string
	AWS       aws.Config
	// LeaderTasks run on the leader while it leads (cloud integrations).
	LeaderTasks []LeaderTask
	// LeaveOnTerminate makes a server leave the Raft configuration when Run
	// ends. Off by default: a restarting server must not shrink the quorum.
	LeaveOnTerminate bool
	// Raft timeouts; see RaftTimeouts.
	Raft RaftTimeouts
	// ServerSVIDTTL is the lifetime of server SVIDs; 72h when zero.
	ServerSVIDTTL time.Duration
	// WorkloadSVIDTTL is the default lifetime of workload SVIDs; 1h when zero.
	WorkloadSVIDTTL time.Duration
	// CAPropagationDelay is how long a prepared CA root is published
	// before it signs, so that every party trusts it first; 1h when zero.
	CAPropagationDelay time.Duration
	// ForeignWebRoots verify foreign bundle endpoints of the https_web
	// profile; the system roots when nil.
	ForeignWebRoots *x509.CertPool
	// MaxLeafTTL bounds the life of any leaf a root signed: a retired root
	// stays in the bundle this long after it stops signing. Computed from
	// the SVID lifetimes when zero (72h plus clock skew); tests shorten it.
	MaxLeafTTL time.Duration
	// SignRate caps SVID signatures per second on this server (burst: a
	// quarter of it); 2000 when zero.
	SignRate int
	// SignRatePerCaller caps the SVID signatures per second one agent or
	// gateway may ask this server for (burst: the largest batch, 1000);
	// no cap of its own when zero. Either way a caller may have at most
	// two signing requests in progress, which alone keeps one caller's
	// batches from starving the others' renewals (see api.signShare).
	SignRatePerCaller int
	// PeerMaxServices, PeerMaxInstances and PeerMaxImportBytes are the
	// quotas on what one peer's imports may hold: a replication batch
	// or resync that would exceed one is refused whole and the stream
	// dropped, keeping the earlier imports. Bytes count the records as
	// the peer sent them. 10,000 services, 100,000 instances and 64 MiB
	// when zero.
	PeerMaxServices    int
	PeerMaxInstances   int
	PeerMaxImportBytes int64
	// PeerResyncTimeout bounds how long a peer's full catalog (a resync)
	// may take to arrive; 5m when zero.
	PeerResyncTimeout time.Duration
	// PeerMaxStreams caps the replication streams one peer may hold open
	// to this site at once; 2 when zero (one, and its replacement while
	// the old one times out).
	PeerMaxStreams int
	// PeerHeartbeat is how often an idle replication stream to a peer
	// says it is alive; 5s when zero. Peers consider a stream dead after
	// three missed heartbeats of their own setting.
	PeerHeartbeat time.Duration
	// PeerStaleAfter is how long imports from a peer are served without
	// contact before they are marked stale; 1m when zero.
	PeerStaleAfter time.Duration
	// VirtualIPCIDR is where virtual IPs of imported services come from:
	// "240.0.0.0/16" when empty; with Dev, a /16 of loopback derived from
	// the site name (DevVirtualIPCIDR), so that a dev site's gateway can
	// listen on them and two dev sites on one host do not collide.
	VirtualIPCIDR string
	// PeerDialer, when set, dials peer sites' servers (tests route peer
	// traffic through an emulated WAN with it).
	PeerDialer func(ctx context.Context, addr string) (net.Conn, error)
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Registerer receives metrics; a private registry when nil.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; the private registry when nil.
	Gatherer prometheus.Gatherer
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// OnBootstrap receives the initial management token, once, when this
	// server bootstraps the site. The token is never logged.
	OnBootstrap func(managementToken string)
	// WrapTransport, when set, wraps the Raft transport. Tests use it to
	// inject partitions and delays on the real network transport.
	WrapTransport func(raft.Transport) raft.Transport
	// InMemoryRaft keeps the Raft log and snapshots in memory even with a
	// DataDir. Tests only.
	InMemoryRaft bool
}

// RaftTimeouts are hashicorp/raft's timing knobs. The defaults suit a 3- or
// 5-server site within one region (round trips under 10 ms): a failed
// leader is replaced in about 1-2 s.
type RaftTimeouts struct {
	Heartbeat     time.Duration // 1s when zero
	Election      time.Duration // 1s when zero
	LeaderLease   time.Duration // 500ms when zero
	CommitTimeout time.Duration // 50ms when zero
}

// DefaultVirtualIPCIDR is the virtual IP range of a site that is not a
// dev site (see Config.VirtualIPCIDR).
const DefaultVirtualIPCIDR = "240.0.0.0/16"

// DevVirtualIPCIDR is the default virtual IP range of a dev site: one of
// the 112 /16s 127.128.0.0/16 to 127.239.0.0/16, chosen by a hash of the
// site name, so that it is the same at every start and two dev sites of
// different names on one host rarely share it (the demo's 127.240/16 and
// up, and 127.0/16, are never chosen). Explicit configuration wins.
func DevVirtualIPCIDR(site string) string {
	h := fnv.New32a()
	h.Write([]byte(site))
	return fmt.Sprintf("127.%d.0.0/16", 128+h.Sum32()%112)
}

// Default per-peer limits (see Config.PeerMaxServices and the rest). A
// large real site exports a few thousand services; 10,000 leaves room and
// is a sixth of the default virtual IP range. Instances average ten per
// service. 64 MiB holds 100,000 instances of about 600 bytes, several
// times a typical instance, and bounds a resync buffer at 128 MiB.
const (
	DefaultPeerMaxServices    = 10_000
	DefaultPeerMaxInstances   = 100_000
	DefaultPeerMaxImportBytes = 64 << 20
	DefaultPeerMaxStreams     = 2
)

// DefaultBindAddr is where a server listens when told nothing.
const DefaultBindAddr = "127.0.0.1:7400"

func (c *Config) setDefaults() error {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Registerer == nil {
		reg := prometheus.NewRegistry()
		c.Registerer, c.Gatherer = reg, reg
	}
	if c.Gatherer == nil {
		if g, ok := c.Registerer.(prometheus.Gatherer); ok {
			c.Gatherer = g
		}
	}
	if c.NodeID == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node id: %w", err)
		}
		c.NodeID = h
	}
	if c.BindAddr == "" {
		c.BindAddr = DefaultBindAddr
	}
	if c.ServerSVIDTTL == 0 {
		c.ServerSVIDTTL = 72 * time.Hour
	}
	if c.WorkloadSVIDTTL == 0 {
		c.WorkloadSVIDTTL = time.Hour
	}
	if c.CAPropagationDelay == 0 {
		c.CAPropagationDelay = time.Hour
	}
	if c.BundleRefreshHint == 0 {
		// Short enough for the propagation delay (see validate).
		c.BundleRefreshHint = min(5*time.Minute, c.CAPropagationDelay/3)
	}
	if c.PeerHeartbeat == 0 {
		c.PeerHeartbeat = replication.DefaultHeartbeat
	}
	if c.PeerStaleAfter == 0 {
		c.PeerStaleAfter = time.Minute
	}
	if c.SignRate == 0 {
		c.SignRate = 2000
	}
	if c.PeerMaxServices == 0 {
		c.PeerMaxServices = DefaultPeerMaxServices
	}
	if c.PeerMaxInstances == 0 {
		c.PeerMaxInstances = DefaultPeerMaxInstances
	}
	if c.PeerMaxImportBytes == 0 {
		c.PeerMaxImportBytes = DefaultPeerMaxImportBytes
	}
	if c.PeerResyncTimeout == 0 {
		c.PeerResyncTimeout = replication.DefaultResyncTimeout
	}
	if c.PeerMaxStreams == 0 {
		c.PeerMaxStreams = DefaultPeerMaxStreams
	}
	if c.APIMaxConnections == 0 {
		c.APIMaxConnections = mux.DefaultMaxConnections
	}
	if c.APIMaxConnectionsPerSource == 0 {
		c.APIMaxConnectionsPerSource = min(mux.DefaultMaxConnectionsPerSource, max(c.APIMaxConnections, 1))
	}
	if c.APIIdleTimeout == 0 {
		c.APIIdleTimeout = api.DefaultIdleTimeout
	}
	r := &c.Raft
	if c.Dev {
		// One server on loopback: elect it at once.
		r.Heartbeat = cmp0(r.Heartbeat, 150*time.Millisecond)
		r.Election = cmp0(r.Election, 150*time.Millisecond)
		r.LeaderLease = cmp0(r.LeaderLease, 100*time.Millisecond)
	}
	r.Heartbeat = cmp0(r.Heartbeat, time.Second)
	r.Election = cmp0(r.Election, time.Second)
	r.LeaderLease = cmp0(r.LeaderLease, 500*time.Millisecond)
	r.CommitTimeout = cmp0(r.CommitTimeout, 50*time.Millisecond)
	if c.Dev {
		c.Bootstrap, c.Join, c.RetryJoin = true, nil, nil
		if c.Site == "" {
			c.Site = "dev"
		}
	}
	if c.VirtualIPCIDR == "" {
		c.VirtualIPCIDR = DefaultVirtualIPCIDR
		if c.Dev {
			c.VirtualIPCIDR = DevVirtualIPCIDR(c.Site)
		}
	}
	if c.KEKFile == "" && c.DataDir != "" {
		c.KEKFile = filepath.Join(c.DataDir, "kek")
	}
	return nil
}

// trustDomainName is the configured trust domain, or the site's default.
func (c *Config) trustDomainName() string {
	if c.TrustDomain != "" {
		return c.TrustDomain
	}
	return c.Site + ".strait"
}

func cmp0(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// validate reports the first problem with c, naming the setting.
func (c *Config) validate() error {
	if err := meshname.ValidLabel(c.NodeID); err != nil {
		return fmt.Errorf("node_name: %w (set it explicitly if the host name is not a DNS label)", err)
	}
	if c.Site != "" {
		if _, err := meshname.ParseSite(c.Site); err != nil {
			return fmt.Errorf("site: %w", err)
		}
	}
	if c.TrustDomain != "" {
		if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
			return fmt.Errorf("trust_domain: %w", err)
		}
	}
	if !c.Dev {
		if c.DataDir == "" {
			return errors.New("data_dir: required (or use --dev for an in-memory server)")
		}
		if c.Bootstrap && len(c.Join)+len(c.RetryJoin) > 0 {
			return errors.New("bootstrap and join: choose one; bootstrap the first server, join the others")
		}
		if len(c.Join)+len(c.RetryJoin) > 0 && c.JoinToken == "" {
			return errors.New("join_token: required to join; create one on the site with `strait token create --kind server`")
		}
	}
	if c.Bootstrap && c.Site == "" {
		return errors.New("site: required to bootstrap a new site")
	}
	if err := aws.ValidateJoin(c.RetryJoin); err != nil {
		return err
	}
	if err := c.AWS.Validate(); err != nil {
		return err
	}
	if c.AdvertiseAddr != "" {
		ap, err := netip.ParseAddrPort(c.AdvertiseAddr)
		if err != nil || ap.Addr().IsUnspecified() {
			return fmt.Errorf("advertise_addr: %q must be a specific ip:port", c.AdvertiseAddr)
		}
	}
	if (c.BundleWebCertFile == "") != (c.BundleWebKeyFile == "") {
		return errors.New("bundle_web_cert_file and bundle_web_key_file: set both or neither")
	}
	if c.Raft.LeaderLease > c.Raft.Heartbeat {
		return errors.New("raft: leader lease must not exceed the heartbeat timeout")
	}
	if _, err := c.dnsAllowRecursionFrom(); err != nil {
		return err
	}
	for _, p := range c.DNSPeerOrder {
		if err := meshname.ValidLabel(p); err != nil {
			return fmt.Errorf("dns_peer_order: %q: %w", p, err)
		}
	}
	if p, err := netip.ParsePrefix(c.VirtualIPCIDR); err != nil || p.Addr().BitLen()-p.Bits() < 4 {
		return fmt.Errorf("virtual_ip_cidr: %q must be a CIDR with room for at least 16 addresses", c.VirtualIPCIDR)
	}
	if c.BundleRefreshHint <= 0 || c.CAPropagationDelay <= 0 {
		return errors.New("bundle_refresh_hint and ca_propagation_delay: must be positive")
	}
	if c.CAPropagationDelay < 3*c.BundleRefreshHint {
		return fmt.Errorf("ca_propagation_delay (%s) must be at least three times bundle_refresh_hint (%s): peers and other SPIFFE implementations poll the bundle endpoint as the hint says, and one that has not fetched a new CA root before it starts signing refuses this site's certificates, and may lose the federation for good; lengthen ca_propagation_delay or shorten bundle_refresh_hint",
			c.CAPropagationDelay, c.BundleRefreshHint)
	}
	if c.SignRate < 0 || c.SignRatePerCaller < 0 {
		return errors.New("sign_rate and sign_rate_per_caller: must not be negative")
	}
	if c.PeerMaxServices < 0 || int64(c.PeerMaxServices) > math.MaxUint32 {
		return fmt.Errorf("peer_max_services: %d is not between 1 and %d", c.PeerMaxServices, uint32(math.MaxUint32))
	}
	if c.PeerMaxInstances < 0 || int64(c.PeerMaxInstances) > math.MaxUint32 {
		return fmt.Errorf("peer_max_instances: %d is not between 1 and %d", c.PeerMaxInstances, uint32(math.MaxUint32))
	}
	if c.PeerMaxImportBytes < 1<<20 {
		return fmt.Errorf("peer_max_import_bytes: %d is below 1 MiB", c.PeerMaxImportBytes)
	}
	if c.PeerResyncTimeout < 0 || c.PeerMaxStreams < 0 {
		return errors.New("peer_resync_timeout and peer_max_streams: must not be negative")
	}
	if c.PeerResyncTimeout > 0 && c.PeerResyncTimeout < 3*c.PeerHeartbeat {
		return fmt.Errorf("peer_resync_timeout (%s) must be at least three peer heartbeats (%s)", c.PeerResyncTimeout, c.PeerHeartbeat)
	}
	if c.APIMaxConnections < 0 || c.APIMaxConnectionsPerSource < 0 || c.APIMaxConnectionsPerSource > c.APIMaxConnections {
		return fmt.Errorf("api_max_connections (%d) and api_max_connections_per_source (%d): must not be negative, and a source's share at most the total",
			c.APIMaxConnections, c.APIMaxConnectionsPerSource)
	}
	if c.APIIdleTimeout < 0 {
		return fmt.Errorf("api_idle_timeout: %s must not be negative", c.APIIdleTimeout)
	}
	if c.PeerHeartbeat < 10*time.Millisecond || c.PeerStaleAfter < 3*c.PeerHeartbeat {
		return fmt.Errorf("peer_stale_after (%s) must be at least three peer heartbeats (%s)", c.PeerStaleAfter, c.PeerHeartbeat)
	}
	return nil
}

// dnsAllowRecursionFrom parses DNSAllowRecursionFrom; nil when empty (the
// default).
func (c *Config) dnsAllowRecursionFrom() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.DNSAllowRecursionFrom {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("dns_allow_recursion_from: %q is not a CIDR (write 10.0.0.0/8, 192.0.2.7/32 or fd00::/8)", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// advertise picks the advertised address from the bound one.
func (c *Config) advertise(bound net.Addr) (string, error) {
	if c.AdvertiseAddr != "" {
		return c.AdvertiseAddr, nil
	}
	ap, err := netip.ParseAddrPort(bound.String())
	if err != nil {
		return "", err
	}
	if ap.Addr().IsUnspecified() {
		return "", fmt.Errorf("advertise_addr: required when binding %s", bound)
	}
	return ap.String(), nil
}

// ValidateConfig checks c as New would, without binding or touching disk.
func ValidateConfig(c Config) error {
	if err := c.setDefaults(); err != nil {
		return err
	}
	return c.validate()
}
