package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/straitmesh/strait/cloud/aws"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/meshname"
)

// FileConfig is the server's config file (YAML). Every key is documented in
// README.md; unknown keys are an error. Flags override the file.
type FileConfig struct {
	Site             string    `yaml:"site"`
	TrustDomain      string    `yaml:"trust_domain"`
	NodeName         string    `yaml:"node_name"`
	DataDir          string    `yaml:"data_dir"`
	BindAddr         string    `yaml:"bind_addr"`
	AdvertiseAddr    string    `yaml:"advertise_addr"`
	APIMaxConns      int       `yaml:"api_max_connections"`
	APIMaxConnsPerIP int       `yaml:"api_max_connections_per_source"`
	APIIdleTimeout   Duration  `yaml:"api_idle_timeout"`
	MetricsAddr      string    `yaml:"metrics_addr"`
	BundleAddr       string    `yaml:"bundle_endpoint_addr"`
	BundleHint       Duration  `yaml:"bundle_refresh_hint"`
	BundleWebCert    string    `yaml:"bundle_web_cert_file"`
	BundleWebKey     string    `yaml:"bundle_web_key_file"`
	WorkloadSVIDTTL  Duration  `yaml:"workload_svid_ttl"`
	SignRate         int       `yaml:"sign_rate"`
	SignRateCaller   int       `yaml:"sign_rate_per_caller"`
	DNSAddr          string    `yaml:"dns_addr"`
	DNSDomain        string    `yaml:"dns_domain"`
	DNSUpstreams     []string  `yaml:"dns_upstreams"`
	DNSAllowRecFrom  []string  `yaml:"dns_allow_recursion_from"`
	DNSTTL           Duration  `yaml:"dns_ttl"`
	DNSPeerOrder     []string  `yaml:"dns_peer_order"`
	CAPropagation    Duration  `yaml:"ca_propagation_delay"`
	PeerHeartbeat    Duration  `yaml:"peer_heartbeat"`
	PeerStaleAfter   Duration  `yaml:"peer_stale_after"`
	VirtualIPCIDR    string    `yaml:"virtual_ip_cidr"`
	PeerMaxServices  int       `yaml:"peer_max_services"`
	PeerMaxInstances int       `yaml:"peer_max_instances"`
	PeerMaxBytes     ByteSize  `yaml:"peer_max_import_bytes"`
	PeerResync       Duration  `yaml:"peer_resync_timeout"`
	PeerMaxStreams   int       `yaml:"peer_max_streams"`
	Bootstrap        bool      `yaml:"bootstrap"`
	Join             []string  `yaml:"join"`
	RetryJoin        []string  `yaml:"retry_join"`
	JoinTokenFile    string    `yaml:"join_token_file"`
	KEKFile          string    `yaml:"kek_file"`
	LeaveOnTerminate bool      `yaml:"leave_on_terminate"`
	ServerSVIDTTL    Duration  `yaml:"server_svid_ttl"`
	LogLevel         string    `yaml:"log_level"`
	LogFormat        string    `yaml:"log_format"`
	AWS              AWSConfig `yaml:"aws"`
	Raft             struct {
		HeartbeatTimeout   Duration `yaml:"heartbeat_timeout"`
		ElectionTimeout    Duration `yaml:"election_timeout"`
		LeaderLeaseTimeout Duration `yaml:"leader_lease_timeout"`
	} `yaml:"raft"`
}

// AWSConfig is the server config's aws block: credentials come from the
// SDK's standard chain; see README.md, "On AWS".
type AWSConfig struct {
	Region    string            `yaml:"region"`
	Profile   string            `yaml:"profile"`
	Endpoints map[string]string `yaml:"endpoints"`
	// KMSKeyID wraps the KEK (kek_file becomes an envelope).
	KMSKeyID        string   `yaml:"kms_key_id"`
	DataKeyRotation Duration `yaml:"data_key_rotation"`
	// BundleBucket and BundleKey: publish the site bundle to S3.
	BundleBucket string `yaml:"bundle_s3_bucket"`
	BundleKey    string `yaml:"bundle_s3_key"`
	CloudMap     struct {
		Namespace       string   `yaml:"namespace"`
		StraitNamespace string   `yaml:"strait_namespace"`
		Publish         bool     `yaml:"publish"`
		Interval        Duration `yaml:"interval"`
	} `yaml:"cloudmap"`
}

func (a *AWSConfig) sdkConfig() aws.Config {
	return aws.Config{Region: a.Region, Profile: a.Profile, Endpoints: a.Endpoints}
}

// used reports whether any AWS integration is configured.
func (a *AWSConfig) used() bool {
	return a.KMSKeyID != "" || a.BundleBucket != "" || a.CloudMap.Namespace != ""
}

func (a *AWSConfig) validate() error {
	if a.BundleKey != "" && a.BundleBucket == "" {
		return errors.New("aws.bundle_s3_key: set aws.bundle_s3_bucket too")
	}
	if a.DataKeyRotation != 0 && a.KMSKeyID == "" {
		return errors.New("aws.data_key_rotation: set aws.kms_key_id too")
	}
	if a.CloudMap.Namespace == "" && (a.CloudMap.Publish || a.CloudMap.StraitNamespace != "" || a.CloudMap.Interval != 0) {
		return errors.New("aws.cloudmap: set namespace")
	}
	if ns := a.CloudMap.StraitNamespace; ns != "" {
		if err := meshname.ValidLabel(ns); err != nil {
			return fmt.Errorf("aws.cloudmap.strait_namespace: %w", err)
		}
	}
	if d := time.Duration(a.CloudMap.Interval); d != 0 && d < time.Second {
		return fmt.Errorf("aws.cloudmap.interval: %s is below 1s (Cloud Map's API rate limits)", d)
	}
	return nil
}

// Duration is a config duration written like 500ms, 2s or 72h.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration like 500ms, 2s or 72h", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// ByteSize is a config size written as a number of bytes or with a unit:
// 64MiB, 512KiB, 1GiB.
type ByteSize int64

// UnmarshalYAML parses a size.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v := strings.TrimSpace(n.Value)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.mult
			break
		}
	}
	x, err := strconv.ParseInt(v, 10, 64)
	if err != nil || x < 0 || x > math.MaxInt64/mult {
		return fmt.Errorf("line %d: %q is not a size like 64MiB, 512KiB or 1048576", n.Line, n.Value)
	}
	*b = ByteSize(x * mult)
	return nil
}

// maxConfigSize bounds a config file.
const maxConfigSize = 1 << 20

// LoadConfigFile reads and strictly decodes a config file.
func LoadConfigFile(path string) (*FileConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("config file %s: larger than %d bytes", path, maxConfigSize)
	}
	return ParseConfig(b, path)
}

// ParseConfig strictly decodes config bytes; name is used in errors.
func ParseConfig(b []byte, name string) (*FileConfig, error) {
	var fc FileConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: %w", name, err)
	}
	return &fc, nil
}

// serverConfig converts to a controlplane.Config, checking what can be
// checked without touching the disk or the network. dev and joinToken come
// from flags or the environment; joinToken overrides join_token_file.
func (fc *FileConfig) serverConfig(dev bool, joinToken string) (controlplane.Config, error) {
	c := controlplane.Config{
		Site: fc.Site, TrustDomain: fc.TrustDomain, NodeID: fc.NodeName, DataDir: fc.DataDir,
		BindAddr: fc.BindAddr, AdvertiseAddr: fc.AdvertiseAddr, MetricsAddr: fc.MetricsAddr,
		APIMaxConnections: fc.APIMaxConns, APIMaxConnectionsPerSource: fc.APIMaxConnsPerIP, APIIdleTimeout: time.Duration(fc.APIIdleTimeout),
		BundleAddr: fc.BundleAddr, BundleRefreshHint: time.Duration(fc.BundleHint),
		BundleWebCertFile: fc.BundleWebCert, BundleWebKeyFile: fc.BundleWebKey,
		WorkloadSVIDTTL: time.Duration(fc.WorkloadSVIDTTL), SignRate: fc.SignRate, SignRatePerCaller: fc.SignRateCaller,
		DNSAddr: fc.DNSAddr, DNSDomain: fc.DNSDomain, DNSUpstreams: fc.DNSUpstreams, DNSAllowRecursionFrom: fc.DNSAllowRecFrom, DNSTTL: time.Duration(fc.DNSTTL), DNSPeerOrder: fc.DNSPeerOrder,
		CAPropagationDelay: time.Duration(fc.CAPropagation),
		PeerHeartbeat:      time.Duration(fc.PeerHeartbeat), PeerStaleAfter: time.Duration(fc.PeerStaleAfter),
		VirtualIPCIDR:   fc.VirtualIPCIDR,
		PeerMaxServices: fc.PeerMaxServices, PeerMaxInstances: fc.PeerMaxInstances, PeerMaxImportBytes: int64(fc.PeerMaxBytes),
		PeerResyncTimeout: time.Duration(fc.PeerResync), PeerMaxStreams: fc.PeerMaxStreams,
		RetryJoin: fc.RetryJoin, AWS: fc.AWS.sdkConfig(), DataKeyRotation: time.Duration(fc.AWS.DataKeyRotation),
		Bootstrap: fc.Bootstrap, Join: fc.Join, KEKFile: fc.KEKFile, Dev: dev, JoinToken: joinToken,
		LeaveOnTerminate: fc.LeaveOnTerminate, ServerSVIDTTL: time.Duration(fc.ServerSVIDTTL),
		Raft: controlplane.RaftTimeouts{
			Heartbeat:   time.Duration(fc.Raft.HeartbeatTimeout),
			Election:    time.Duration(fc.Raft.ElectionTimeout),
			LeaderLease: time.Duration(fc.Raft.LeaderLeaseTimeout),
		},
	}
	if c.JoinToken == "" && fc.JoinTokenFile != "" {
		tok, err := readTokenFile(fc.JoinTokenFile)
		if err != nil {
			return c, fmt.Errorf("join_token_file: %w", err)
		}
		c.JoinToken = tok
	}
	for _, f := range []struct{ key, path string }{
		{"bundle_web_cert_file", fc.BundleWebCert},
		{"bundle_web_key_file", fc.BundleWebKey},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return c, fmt.Errorf("%s: %w", f.key, fileProblem(f.path, err))
		}
	}
	if fc.SignRate < 0 {
		return c, fmt.Errorf("sign_rate: %d must not be negative", fc.SignRate)
	}
	if fc.SignRateCaller < 0 {
		return c, fmt.Errorf("sign_rate_per_caller: %d must not be negative", fc.SignRateCaller)
	}
	if fc.PeerMaxServices < 0 || fc.PeerMaxInstances < 0 || fc.PeerMaxStreams < 0 {
		return c, errors.New("peer_max_services, peer_max_instances and peer_max_streams: must not be negative")
	}
	if _, err := parseLogLevel(fc.LogLevel); err != nil {
		return c, err
	}
	if err := fc.AWS.validate(); err != nil {
		return c, err
	}
	switch fc.LogFormat {
	case "", "text", "json":
	default:
		return c, fmt.Errorf("log_format: %q is not text or json", fc.LogFormat)
	}
	return c, controlplane.ValidateConfig(c)
}

// maxTokenFile bounds a join token file (a token is about 200 bytes).
const maxTokenFile = 4096

// readTokenFile reads a join token from a file, trimmed.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fileProblem(path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxTokenFile {
		return "", fmt.Errorf("%s is larger than %d bytes: not a join token file", path, maxTokenFile)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty: write the output of `strait token create --kind server` into it", path)
	}
	return tok, nil
}

// fileProblem says what is wrong with a file a setting names.
func fileProblem(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("file %s does not exist", path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("file %s is not readable by this user", path)
	}
	return err
}

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if s == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log_level: %q is not debug, info, warn or error", s)
	}
	return l, nil
}

func (fc *FileConfig) logger(w io.Writer) *slog.Logger {
	lvl, _ := parseLogLevel(fc.LogLevel)
	opts := &slog.HandlerOptions{Level: lvl}
	if fc.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with server config files"}
	cmd.AddCommand(&cobra.Command{
		Use:   "validate FILE",
		Short: "Check a server config file: syntax, keys and values",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fc, err := LoadConfigFile(args[0])
			if err != nil {
				return err
			}
			if _, err := fc.serverConfig(false, ""); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			fmt.Fprintf(g.stdout, "%s: valid\n", args[0])
			return nil
		},
	})
	return cmd
}
