package passthrough

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, s := range []string{"198.51.100.7:4000", "[2001:db8::1]:443", "[::ffff:10.0.0.1]:1"} {
		ap := netip.MustParseAddrPort(s)
		b := Append(nil, ap)
		// The client's own bytes follow and must be left unread.
		r := bytes.NewReader(append(b, 0x16, 0x03))
		got, ok, _, err := Read(r)
		want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if err != nil || !ok || got != want {
			t.Fatalf("%s: %v %v %v", s, got, ok, err)
		}
		if r.Len() != 2 {
			t.Fatalf("%s: read %d bytes past the preamble", s, 2-r.Len())
		}
	}
	// No preamble: the first byte is handed back.
	_, ok, first, err := Read(bytes.NewReader([]byte{0x16, 0x03, 0x01}))
	if err != nil || ok || first != 0x16 {
		t.Fatalf("TLS record: %v %x %v", ok, first, err)
	}
	for _, bad := range [][]byte{{0}, []byte("\x00strait\x02"), []byte(Magic + "\x05"), []byte(Magic + "\x04\x01\x02")} {
		if _, _, _, err := Read(bytes.NewReader(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v, want ErrMalformed", bad, err)
		}
	}
}

// FuzzRead: whatever a client sends, Read never reads beyond a preamble
// (MaxLen bytes), and an address it accepts survives a round trip.
func FuzzRead(f *testing.F) {
	f.Add(Append(nil, netip.MustParseAddrPort("192.0.2.1:80")))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00})
	f.Add([]byte(Magic + "\x06"))
	f.Add(append([]byte(Magic+"\x06"), netip.MustParseAddr("::ffff:10.0.0.1").AsSlice()...))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		ap, ok, _, err := Read(r)
		used := len(b) - r.Len()
		if used > MaxLen {
			t.Fatalf("read %d bytes", used)
		}
		if ok {
			again, ok2, _, err2 := Read(bytes.NewReader(Append(nil, ap)))
			if err != nil || err2 != nil || !ok2 || again != ap {
				t.Fatalf("accepted %v from %x (%v), read back %v (%v)", ap, b[:used], err, again, err2)
			}
		}
	})
}
