package agent

import (
	"strconv"
	"strings"
	"testing"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/trust/workloadapi"
)

// FuzzAttestation: a caller of the Workload API, as attested from its
// socket's peer credentials, matches an entry only when every one of the
// entry's selectors is a unix selector naming exactly the caller's uid,
// gid or (known) executable path; an entry without selectors matches
// nobody; matching depends on nothing else.
func FuzzAttestation(f *testing.F) {
	f.Add(uint32(1000), uint32(1000), "/usr/bin/ledger", "unix:uid=1000\nunix:path=/usr/bin/ledger")
	f.Add(uint32(0), uint32(0), "", "unix:uid=0\nunix:path=")
	f.Add(uint32(0), uint32(0), "", "unix:uid=00")
	f.Add(uint32(5), uint32(6), "/x", "")
	f.Add(uint32(5), uint32(6), "/x", "k8s:uid=5")
	f.Fuzz(func(t *testing.T, uid, gid uint32, exe, selectors string) {
		c := workloadapi.Caller{PID: 1, UID: uid, GID: gid, Path: exe}
		e := &apipb.WorkloadEntry{Namespace: "ns", Service: "svc", Agent: "*"}
		for _, line := range strings.Split(selectors, "\n") {
			if line == "" {
				continue
			}
			typ, kv, _ := strings.Cut(line, ":")
			k, v, _ := strings.Cut(kv, "=")
			e.Selectors = append(e.Selectors, &apipb.Selector{Type: typ, Key: k, Value: v})
		}
		got := matches(e, c.Selectors())
		want := len(e.Selectors) > 0
		for _, s := range e.Selectors {
			ok := s.Type == "unix"
			switch s.Key {
			case "uid":
				ok = ok && s.Value == strconv.FormatUint(uint64(uid), 10)
			case "gid":
				ok = ok && s.Value == strconv.FormatUint(uint64(gid), 10)
			case "path":
				ok = ok && exe != "" && s.Value == exe
			default:
				ok = false
			}
			want = want && ok
		}
		if got != want {
			t.Fatalf("caller uid=%d gid=%d path=%q, entry selectors %v: matches=%v, want %v", uid, gid, exe, e.Selectors, got, want)
		}
	})
}
