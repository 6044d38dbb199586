package meshname

import (
	"strings"
	"testing"
)

func TestValidLabel(t *testing.T) {
	for _, ok := range []string{"a", "aws-east", "dc1", "a-b-c", strings.Repeat("x", 63), "0"} {
		if err := ValidLabel(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a.b", "a_b", "ä", strings.Repeat("x", 64), "a b"} {
		if err := ValidLabel(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzValidLabel(f *testing.F) {
	f.Add("aws-east")
	f.Fuzz(func(t *testing.T, s string) {
		if ValidLabel(s) != nil {
			return
		}
		if len(s) == 0 || len(s) > MaxLabel || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			t.Fatalf("accepted %q", s)
		}
	})
}
