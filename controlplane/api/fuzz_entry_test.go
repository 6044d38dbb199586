package api

import (
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust"
)

// FuzzValidateEntry: workload entries are what Workload API attestation
// matches callers against. Whatever validateEntry accepts names a valid
// workload SPIFFE ID, a valid agent, 1 to MaxSelectors unix selectors a
// caller can actually present (numeric uid and gid, a clean absolute
// path), and a TTL in range; accepting is stable (a second check of the
// accepted entry accepts it unchanged).
func FuzzValidateEntry(f *testing.F) {
	f.Add("payments", "ledger", "web-1", "unix:uid=1000\nunix:path=/usr/bin/ledger", int64(3600), int32(0))
	f.Add("", "api", "*", "unix:gid=0", int64(0), int32(0))
	f.Add("Bad", "api", "x", "unix:uid=-1", int64(30), int32(-5))
	f.Add("ns", "svc", "a", "k8s:pod=x\nunix:path=/a/../b\nunix:uid=4294967296", int64(1<<40), int32(999999999))
	f.Add("ns", "svc", "a", strings.Repeat("unix:uid=1\n", 9), int64(60), int32(0))
	f.Fuzz(func(t *testing.T, ns, svc, agent, selectors string, ttlSec int64, ttlNanos int32) {
		e := &apipb.WorkloadEntry{Namespace: ns, Service: svc, Agent: agent}
		for _, line := range strings.Split(selectors, "\n") {
			if line == "" {
				continue
			}
			typ, kv, _ := strings.Cut(line, ":")
			k, v, _ := strings.Cut(kv, "=")
			e.Selectors = append(e.Selectors, &apipb.Selector{Type: typ, Key: k, Value: v})
		}
		if ttlSec != 0 || ttlNanos != 0 {
			e.SvidTtl = &durationpb.Duration{Seconds: ttlSec, Nanos: ttlNanos}
		}
		if err := validateEntry(e); err != nil {
			if _, ok := err.(*FieldError); !ok {
				t.Fatalf("refusal is not a FieldError: %T %v", err, err)
			}
			return
		}
		if _, err := trust.WorkloadID(spiffeid.RequireTrustDomainFromString("fuzz.strait"), e.Namespace, e.Service); err != nil {
			t.Fatalf("accepted entry %v names no valid workload ID: %v", e, err)
		}
		if e.Agent != "*" && meshname.ValidLabel(e.Agent) != nil {
			t.Fatalf("accepted agent %q", e.Agent)
		}
		if n := len(e.Selectors); n == 0 || n > MaxSelectors {
			t.Fatalf("accepted %d selectors", n)
		}
		for _, s := range e.Selectors {
			switch {
			case s.Type != "unix":
				t.Fatalf("accepted selector type %q", s.Type)
			case s.Key == "uid" || s.Key == "gid":
				if n, err := strconv.ParseUint(s.Value, 10, 32); err != nil || n > 1<<31 {
					t.Fatalf("accepted unix:%s=%q", s.Key, s.Value)
				}
			case s.Key == "path":
				if !path.IsAbs(s.Value) || path.Clean(s.Value) != s.Value || len(s.Value) > maxSelectorValue {
					t.Fatalf("accepted unix:path=%q", s.Value)
				}
			default:
				t.Fatalf("accepted selector key %q", s.Key)
			}
		}
		if e.SvidTtl != nil {
			if d := e.SvidTtl.AsDuration(); d < MinSVIDTTL || d > MaxSVIDTTL {
				t.Fatalf("accepted TTL %v", e.SvidTtl)
			}
		}
		again := proto.Clone(e).(*apipb.WorkloadEntry)
		if err := validateEntry(again); err != nil || !proto.Equal(again, e) {
			t.Fatalf("an accepted entry is refused or changed on a second check: %v", err)
		}
	})
}
