package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

// run runs the CLI in-process and returns exit code, stdout and stderr.
func run(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	code := Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCLIAgainstARealSite(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{})
	env := map[string]string{
		"STRAIT_ADDR":        c.Nodes[0].Addr,
		"STRAIT_TOKEN":       c.Token,
		"STRAIT_CA_FILE":     controlplane.CAFile(c.Nodes[0].Dir),
		"STRAIT_DEV_CONTEXT": filepath.Join(t.TempDir(), "none.json"),
	}
	code, out, errs := run(t, env, "service", "register", "--ns", "payments", "--name", "api", "--port", "http=8080/http", "--address", "10.0.0.5", "--id", "api-1")
	if code != 0 || !strings.Contains(out, "Registered service payments/api, instance api-1") {
		t.Fatalf("register: %d %q %q", code, out, errs)
	}
	code, out, _ = run(t, env, "service", "list", "--json")
	if code != 0 {
		t.Fatalf("list: %d", code)
	}
	var list struct {
		Services []struct {
			Service struct {
				Namespace, Name string
			}
			Instances int
		}
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("list --json is not JSON: %v\n%s", err, out)
	}
	if len(list.Services) != 1 || list.Services[0].Service.Name != "api" || list.Services[0].Instances != 1 {
		t.Fatalf("list --json: %s", out)
	}
	code, out, _ = run(t, env, "service", "show", "--ns", "payments", "--name", "api", "--consistent")
	if code != 0 || !strings.Contains(out, "api-1") || !strings.Contains(out, "passing") {
		t.Fatalf("show: %d %s", code, out)
	}
	code, out, _ = run(t, env, "status", "--json")
	if code != 0 || !strings.Contains(out, `"state": "leader"`) || !strings.Contains(out, `"healthy": true`) {
		t.Fatalf("status --json: %d %s", code, out)
	}
	// Validation errors: exit 1, field and rule on stderr, nothing on stdout.
	code, out, errs = run(t, env, "service", "register", "--ns", "Payments", "--name", "api")
	if code != 1 || out != "" || !strings.Contains(errs, "service.namespace") || !strings.Contains(errs, "InvalidArgument") {
		t.Fatalf("bad namespace: %d %q %q", code, out, errs)
	}
	// Usage errors: exit 2.
	if code, _, errs = run(t, env, "service", "register", "--name", "api", "--port", "http=99999"); code != 2 {
		t.Fatalf("bad port: exit %d %q", code, errs)
	}
	// Without credentials the error says what to set.
	noAuth := map[string]string{"STRAIT_ADDR": "", "STRAIT_TOKEN": "", "STRAIT_CA_FILE": ""}
	if code, _, errs = run(t, noAuth, "service", "list"); code != 1 || !strings.Contains(errs, "STRAIT_ADDR") {
		t.Fatalf("no address: %d %q", code, errs)
	}
}

// TestServerFlags runs the real server command up to the point where it
// would contact the site, so flag handling is checked end to end.
func TestServerFlags(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"STRAIT_JOIN_TOKEN": ""}
	base := []string{"server", "--site", "dc1", "--node-name", "s2", "--data-dir", dir, "--bind-addr", "127.0.0.1:0", "--join", "127.0.0.1:1"}
	// The token flag reaches the join (which then finds it malformed).
	code, _, errs := run(t, env, append(base, "--join-token", "strait_bogus")...)
	if code != 1 || !strings.Contains(errs, "join token is malformed") {
		t.Fatalf("--join-token: exit %d, %q", code, errs)
	}
	// So does the environment variable.
	code, _, errs = run(t, map[string]string{"STRAIT_JOIN_TOKEN": "strait_bogus"}, base...)
	if code != 1 || !strings.Contains(errs, "join token is malformed") {
		t.Fatalf("STRAIT_JOIN_TOKEN: exit %d, %q", code, errs)
	}
	// Without either, the error says how to get one.
	code, _, errs = run(t, env, base...)
	if code != 1 || !strings.Contains(errs, "strait token create --kind server") {
		t.Fatalf("no token: exit %d, %q", code, errs)
	}
}

func TestParsePort(t *testing.T) {
	tests := []struct {
		in      string
		name    string
		num     uint32
		proto   string
		wantErr bool
	}{
		{"http=8080/http", "http", 8080, "PROTOCOL_HTTP", false},
		{"db=5432", "db", 5432, "PROTOCOL_TCP", false},
		{"grpc/grpc", "grpc", 0, "PROTOCOL_GRPC", false},
		{"x=0", "", 0, "", true},
		{"x=70000", "", 0, "", true},
		{"x=80/udp", "", 0, "", true},
		{"8080", "", 0, "", true},
		{"8080/http", "", 0, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, num, err := parsePort(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatal("accepted")
				}
				return
			}
			if err != nil || p.Name != tt.name || num != tt.num || p.Protocol.String() != tt.proto {
				t.Fatalf("got %v %d %v", p, num, err)
			}
		})
	}
}

func TestConfigFile(t *testing.T) {
	_, write := tempFiles(t)
	good := write("good.yaml", "site: aws-east\nnode_name: s1\ndata_dir: /var/lib/strait\nbind_addr: 10.0.1.5:7400\njoin: [\"10.0.1.6:7400\"]\njoin_token_file: "+write("tok", "strait_x.y\n")+"\nlog_format: json\nraft:\n  heartbeat_timeout: 2s\n")
	tests := []struct {
		name, file, wantErr string
	}{
		{"valid", good, ""},
		{"unknown key", write("unknown.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nsiet: b\n"), "field siet not found"},
		{"bad site", write("site.yaml", "site: AWS\nnode_name: s1\ndata_dir: /d\nbootstrap: true\n"), "site"},
		{"bootstrap and join", write("both.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\njoin: [\"1.2.3.4:1\"]\n"), "choose one"},
		{"join without token", write("notoken.yaml", "site: a\nnode_name: s1\ndata_dir: /d\njoin: [\"1.2.3.4:1\"]\n"), "join_token"},
		{"bad duration", write("dur.yaml", "raft:\n  heartbeat_timeout: soon\n"), "is not a duration like"},
		{"bad log level", write("lvl.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nlog_level: loud\n"), "log_level"},
		{"no data dir", write("nodir.yaml", "site: a\nnode_name: s1\n"), "data_dir"},
		{"aws", write("aws.yaml", "site: a\nnode_name: s1\ndata_dir: /d\njoin_token_file: "+write("tok2", "strait_x.y\n")+
			"\nretry_join: [\"provider=aws region=us-east-1 tag_key=strait-site tag_value=a\"]\naws:\n  region: us-east-1\n  kms_key_id: alias/strait\n"+
			"  data_key_rotation: 720h\n  bundle_s3_bucket: b\n  cloudmap:\n    namespace: ecs\n    publish: true\n  endpoints:\n    kms: https://kms.internal\n"), ""},
		{"bad retry_join", write("rj.yaml", "site: a\nnode_name: s1\ndata_dir: /d\njoin_token_file: "+write("tok3", "strait_x.y\n")+"\nretry_join: [\"provider=aws tag_key=a\"]\n"), "tag_value"},
		{"retry_join without token", write("rjt.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nretry_join: [\"10.0.0.1:7400\"]\n"), "join_token"},
		{"aws endpoint", write("ep.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\naws:\n  endpoints:\n    sqs: http://x\n"), "unknown service"},
		{"aws rotation without kms", write("rot.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\naws:\n  data_key_rotation: 1h\n"), "kms_key_id"},
		{"dns recursion acl", write("acl.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\ndns_upstreams: [\"10.0.0.2:53\"]\ndns_allow_recursion_from: [\"10.0.0.0/8\", \"192.0.2.7/32\", \"fd00::/8\"]\n"), ""},
		{"dns recursion acl without a mask", write("aclbad.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\ndns_allow_recursion_from: [\"10.0.0.1\"]\n"), "dns_allow_recursion_from: \"10.0.0.1\" is not a CIDR"},
		{"api limits", write("limits.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\napi_max_connections: 1000\napi_max_connections_per_source: 100\napi_idle_timeout: 2m\n"), ""},
		{"api per source over total", write("limits2.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\napi_max_connections: 10\napi_max_connections_per_source: 20\n"), "api_max_connections_per_source"},
		{"negative api limit", write("limits3.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\napi_max_connections: -1\n"), "api_max_connections"},
		{"cloudmap without namespace", write("cm.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\naws:\n  cloudmap:\n    publish: true\n"), "namespace"},
		{"peer limits", write("lim.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\npeer_max_services: 500\npeer_max_instances: 5000\npeer_max_import_bytes: 16MiB\npeer_resync_timeout: 2m\npeer_max_streams: 3\nsign_rate_per_caller: 50\n"), ""},
		{"bad size", write("size.yaml", "peer_max_import_bytes: lots\n"), "is not a size like"},
		{"tiny bytes quota", write("tiny.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\npeer_max_import_bytes: 1KiB\n"), "peer_max_import_bytes"},
		{"negative quota", write("neg.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\npeer_max_services: -1\n"), "peer_max_services"},
		{"negative per-caller rate", write("rate.yaml", "site: a\nnode_name: s1\ndata_dir: /d\nbootstrap: true\nsign_rate_per_caller: -5\n"), "sign_rate_per_caller"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := run(t, nil, "config", "validate", tt.file)
			if tt.wantErr == "" {
				if code != 0 || !strings.Contains(out, "valid") {
					t.Fatalf("valid config rejected: %d %q", code, errs)
				}
				return
			}
			if code == 0 || !strings.Contains(errs, tt.wantErr) {
				t.Fatalf("exit %d, stderr %q, want an error mentioning %q", code, errs, tt.wantErr)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("site: a\nnode_name: s1\ndata_dir: /d\nraft:\n  heartbeat_timeout: 1s\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fc, err := ParseConfig(b, "fuzz")
		if err != nil {
			return
		}
		fc.JoinTokenFile = "" // no file reads from fuzzed input
		_, _ = fc.serverConfig(false, "")
	})
}

// tempFiles makes a temporary directory and a function that writes a
// file (0600) there and returns its path.
func tempFiles(t *testing.T) (dir string, write func(name, body string) string) {
	t.Helper()
	dir = t.TempDir()
	return dir, func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
}
