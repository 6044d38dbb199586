package gateway

import (
	"encoding/binary"
	"net"
)

// frameConn joins each yamux data frame's header with its body into one
// write. yamux's send loop writes a frame as two writes, header then body,
// and each write to a TLS connection is its own record and its own
// syscall: a one-byte request cost two records on every tunnel it
// crossed. The send loop is the only writer, so a data header is held
// until the body that follows it; every other frame goes out at once.
type frameConn struct {
	net.Conn
	hdr  []byte // a held data frame header, or empty
	buf  []byte
	body int // the held header's body length
}

const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	// maxCoalesced bounds the copy: larger bodies (the gateway writes at
	// most its 32 KiB copy buffer) go out after their header unjoined.
	maxCoalesced = 64 << 10
)

func coalesceFrames(c net.Conn) net.Conn { return &frameConn{Conn: c} }

func (c *frameConn) Write(p []byte) (int, error) {
	if len(c.hdr) > 0 {
		if len(p) != c.body {
			// Not the body announced (yamux never does this): send both as they are.
			if _, err := c.Conn.Write(c.hdr); err != nil {
				c.hdr = c.hdr[:0]
				return 0, err
			}
			c.hdr = c.hdr[:0]
			return c.Conn.Write(p)
		}
		c.buf = append(append(c.buf[:0], c.hdr...), p...)
		c.hdr = c.hdr[:0]
		if _, err := c.Conn.Write(c.buf); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData {
		if n := int(binary.BigEndian.Uint32(p[8:12])); n > 0 && n <= maxCoalesced {
			c.hdr, c.body = append(c.hdr[:0], p...), n
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}
