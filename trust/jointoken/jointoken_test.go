package jointoken_test

import (
	"strings"
	"testing"

	"github.com/straitmesh/strait/trust/jointoken"
)

func FuzzParse(f *testing.F) {
	f.Add("strait_" + strings.Repeat("A", 43) + "." + strings.Repeat("B", 43))
	f.Add("strait_x.y")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := jointoken.Parse(s)
		if err != nil {
			return
		}
		if !strings.HasPrefix(tok.Secret, "strait_") || len(tok.Secret) != 50 {
			t.Fatalf("accepted a malformed secret %q", tok.Secret)
		}
	})
}
