// Package passthrough is the preamble a gateway writes before every
// connection it passes through from the WAN to its site's servers (SNI
// servers.<td>), and the servers' reader of it.
//
// The preamble tells the server that the connection arrived from outside
// the site, and from which address: the server then serves it only the
// federation methods, and counts it against that address's share of the
// server port. A gateway writes it on every passthrough connection before
// the first byte of the client's, so a client on the WAN cannot leave it
// out, and one it forged would follow the gateway's (and break the TLS
// handshake). A connection without it came straight from the site's own
// network and is served as before.
//
// Wire format: the 8 bytes of Magic (whose first byte, 0, can never start
// a TLS record), then the client's address: 4 (IPv4) or 6 (IPv6), the
// address's 4 or 16 bytes, and the port (2 bytes, big endian).
//
// Stateless; imported by gateway and controlplane/mux.
package passthrough

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Magic starts every preamble.
const Magic = "\x00strait\x01"

// MaxLen is the longest preamble.
const MaxLen = len(Magic) + 1 + 16 + 2

// ErrMalformed is a connection whose first byte announced a preamble that
// did not follow.
var ErrMalformed = errors.New("malformed passthrough preamble")

// Append appends the preamble for a connection from client to b.
func Append(b []byte, client netip.AddrPort) []byte {
	b = append(b, Magic...)
	a := client.Addr().Unmap()
	if a.Is4() {
		b = append(b, 4)
		v := a.As4()
		b = append(b, v[:]...)
	} else {
		b = append(b, 6)
		v := a.As16()
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, client.Port())
}

// Read reads a connection's first byte and, when it starts a preamble,
// exactly the rest of it (never a byte beyond). ok says whether there was
// one; when there was not, first is the byte read, which belongs to the
// connection's own stream.
func Read(r io.Reader) (client netip.AddrPort, ok bool, first byte, err error) {
	var b [MaxLen]byte
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return netip.AddrPort{}, false, 0, err
	}
	if b[0] != Magic[0] {
		return netip.AddrPort{}, false, b[0], nil
	}
	if _, err := io.ReadFull(r, b[1:len(Magic)+1]); err != nil {
		return netip.AddrPort{}, false, 0, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if string(b[:len(Magic)]) != Magic {
		return netip.AddrPort{}, false, 0, ErrMalformed
	}
	var n int
	switch b[len(Magic)] {
	case 4:
		n = 4
	case 6:
		n = 16
	default:
		return netip.AddrPort{}, false, 0, ErrMalformed
	}
	rest := b[len(Magic)+1 : len(Magic)+1+n+2]
	if _, err := io.ReadFull(r, rest); err != nil {
		return netip.AddrPort{}, false, 0, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	addr, _ := netip.AddrFromSlice(rest[:n])
	return netip.AddrPortFrom(addr.Unmap(), binary.BigEndian.Uint16(rest[n:])), true, 0, nil
}
