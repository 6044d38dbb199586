package gateway

import (
	"bufio"
	"encoding/binary"
	"errors"
)

// peekClientHello reads, without consuming, the TLS ClientHello at the
// start of r and returns its server name and ALPN protocols. It handles a
// ClientHello in one record (any TLS 1.2/1.3 client's, key shares
// included); anything else is an error, and the connection is then
// treated as an ordinary tunnel handshake.
func peekClientHello(r *bufio.Reader) (sni string, alpn []string, err error) {
	hdr, err := r.Peek(5)
	if err != nil {
		return "", nil, err
	}
	if hdr[0] != 0x16 || hdr[1] != 0x03 {
		return "", nil, errors.New("not a TLS handshake")
	}
	n := int(binary.BigEndian.Uint16(hdr[3:]))
	rec, err := r.Peek(5 + n)
	if err != nil {
		return "", nil, err
	}
	return parseClientHello(rec[5:])
}

var errShort = errors.New("truncated ClientHello")

// parseClientHello extracts SNI and ALPN from a handshake message.
func parseClientHello(b []byte) (sni string, alpn []string, err error) {
	// handshake header: type 1, 3-byte length
	if len(b) < 4 || b[0] != 1 {
		return "", nil, errors.New("not a ClientHello")
	}
	l := int(b[1])<<16 | int(b[2])<<8 | int(b[3])
	if len(b) < 4+l {
		return "", nil, errShort
	}
	b = b[4 : 4+l]
	// version (2), random (32)
	if len(b) < 34 {
		return "", nil, errShort
	}
	b = b[34:]
	skip := func(lenBytes int) bool {
		if len(b) < lenBytes {
			return false
		}
		n := 0
		for _, c := range b[:lenBytes] {
			n = n<<8 | int(c)
		}
		if len(b) < lenBytes+n {
			return false
		}
		b = b[lenBytes+n:]
		return true
	}
	// session id (1), cipher suites (2), compression methods (1)
	if !skip(1) || !skip(2) || !skip(1) {
		return "", nil, errShort
	}
	if len(b) < 2 {
		return "", nil, nil // no extensions
	}
	el := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < el {
		return "", nil, errShort
	}
	b = b[:el]
	for len(b) >= 4 {
		typ, n := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 4+n {
			return "", nil, errShort
		}
		ext := b[4 : 4+n]
		b = b[4+n:]
		switch typ {
		case 0: // server_name
			if len(ext) < 2 {
				return "", nil, errShort
			}
			list := ext[2:]
			for len(list) >= 3 {
				nt, nl := list[0], int(binary.BigEndian.Uint16(list[1:]))
				if len(list) < 3+nl {
					return "", nil, errShort
				}
				if nt == 0 {
					sni = string(list[3 : 3+nl])
				}
				list = list[3+nl:]
			}
		case 16: // application_layer_protocol_negotiation
			if len(ext) < 2 {
				return "", nil, errShort
			}
			list := ext[2:]
			for len(list) >= 1 {
				pl := int(list[0])
				if len(list) < 1+pl {
					return "", nil, errShort
				}
				alpn = append(alpn, string(list[1:1+pl]))
				list = list[1+pl:]
			}
		}
	}
	return sni, alpn, nil
}
