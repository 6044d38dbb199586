package state

import (
	"net/netip"
	"testing"
)

// TestVIPIndexEdges: the network and broadcast addresses of an IPv4
// range are never handed out, a /8 included (the largest range used
// whole).
func TestVIPIndexEdges(t *testing.T) {
	for _, tt := range []struct {
		prefix string
		usable uint64
	}{
		{"10.0.0.0/8", 1<<24 - 2},
		{"10.1.0.0/16", 1<<16 - 2},
		{"10.1.2.0/29", 6},
		{"10.0.0.0/7", 1<<24 - 1}, // used from its start: no broadcast inside
	} {
		x := newVIPIndex(netip.MustParsePrefix(tt.prefix))
		if x.usable != tt.usable {
			t.Errorf("%s: %d usable addresses, want %d", tt.prefix, x.usable, tt.usable)
		}
	}
}
