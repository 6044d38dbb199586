package cli

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestBadUsageExitsTwo: a mistyped subcommand, at any level, or an unknown
// flag exits 2 and says what was probably meant; nothing runs (no server is
// configured, so anything that ran would fail with exit 1).
func TestBadUsageExitsTwo(t *testing.T) {
	env := map[string]string{"STRAIT_ADDR": "", "STRAIT_DEV_CONTEXT": filepath.Join(t.TempDir(), "none.json")}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"federaton", "list"}, "did you mean strait federation?"},
		{[]string{"federation", "delet", "gcp-west"}, "did you mean strait federation delete?"},
		{[]string{"ca", "rotat"}, "did you mean strait ca rotate?"},
		{[]string{"service", "lst"}, "did you mean strait service list?"},
		{[]string{"token", "lst"}, "did you mean strait token list?"},
		{[]string{"operator", "raft", "peers"}, "did you mean strait operator raft list-peers?"},
		{[]string{"operator", "rafts"}, "did you mean strait operator raft?"},
		{[]string{"bundle", "del", "x.strait"}, "did you mean strait bundle delete?"},
		{[]string{"workload", "rm", "1"}, "its commands are delete, grpc-files, list, register"},
		{[]string{"gateway", "lst"}, "did you mean strait gateway list?"},
		{[]string{"agent", "revok", "web-1"}, "did you mean strait agent revoke?"},
		{[]string{"export", "lst"}, "did you mean strait export list?"},
		{[]string{"completion", "bsh"}, "did you mean strait completion bash,"},
		// Arguments where none or one is taken.
		{[]string{"intention", "remove", "x"}, "strait intention delete: unknown command \"x\""},
		{[]string{"workload", "delete"}, "usage: strait workload delete ID"},
		{[]string{"federation", "show"}, "usage: strait federation show NAME"},
		// Unknown flags name the closest.
		{[]string{"service", "list", "--namespace", "payments"}, "unknown flag --namespace; did you mean --ns?"},
		{[]string{"export", "--service", "api"}, "did you mean --svc?"},
		{[]string{"status", "--adr", "x"}, "did you mean --addr?"},
		{[]string{"token", "create", "--knd", "read"}, "did you mean --kind?"},
		{[]string{"service", "list", "--frobnicate"}, "unknown flag --frobnicate (see strait service list --help)"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errs := run(t, env, tt.args...)
			if code != 2 || !strings.Contains(errs, tt.want) {
				t.Fatalf("exit %d, stderr %q, stdout %q; want exit 2 and %q", code, errs, out, tt.want)
			}
		})
	}
}

// TestOldSpellingsStillWork: the verbs and flags renamed for consistency
// keep their old spellings as aliases (checked here up to argument
// validation, which names the command they resolve to).
func TestOldSpellingsStillWork(t *testing.T) {
	env := map[string]string{"STRAIT_ADDR": "", "STRAIT_DEV_CONTEXT": filepath.Join(t.TempDir(), "none.json")}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"federation", "remove"}, "strait federation delete NAME"},
		{[]string{"bundle", "remove"}, "strait bundle delete TRUST_DOMAIN"},
		{[]string{"workload", "remove"}, "strait workload delete ID"},
	} {
		code, _, errs := run(t, env, tt.args...)
		if code != 2 || !strings.Contains(errs, tt.want) {
			t.Fatalf("%v: exit %d %q, want the usage of %q", tt.args, code, errs, tt.want)
		}
	}
	// A group alone prints its help and succeeds.
	if code, out, _ := run(t, env, "federation"); code != 0 || !strings.Contains(out, "Available Commands") {
		t.Fatalf("federation alone: %d %q", code, out)
	}
}

func TestParseAddrs(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"localhost", "localhost:7400", false},
		{"10.0.0.5", "10.0.0.5:7400", false},
		{"10.0.0.5:7401", "10.0.0.5:7401", false},
		{"::1", "[::1]:7400", false},
		{"[::1]", "[::1]:7400", false},
		{"[::1]:9", "[::1]:9", false},
		{"a:7401, b ,c:7403", "a:7401,b:7400,c:7403", false},
		{"", "", false},
		{"a:", "", true},
		{":7400", "", true},
		{"a:b:c", "", true},
	}
	for _, tt := range tests {
		got, err := parseAddrs(tt.in)
		if (err != nil) != tt.wantErr || strings.Join(got, ",") != tt.want {
			t.Errorf("parseAddrs(%q) = %v, %v; want %q (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
