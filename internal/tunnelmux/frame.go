// Package tunnelmux multiplexes many byte streams over one connection: the
// tunnel between two gateways, where every client connection becomes a
// stream and the connection is a single mTLS session.
//
// It is built for what a gateway does with a stream: open it with a small
// header, read one answer, then copy bytes both ways and half-close. So an
// open carries its header in the same frame (no separate SYN and ACK), and
// the stream's first data can leave in the same write (Session.Open); an
// answer can wait, for at most a millisecond, to leave with the frame that
// follows it (Stream.WriteDeferred). A small frame on an idle connection
// is written by the goroutine that makes it, with no hand-off; bulk data,
// and every frame made while a write is in progress, go into one buffer
// that a flusher goroutine hands to the connection in a single write, so a
// busy tunnel sends many frames per TLS record and syscall, and encrypting
// one chunk overlaps reading the next. Flow control is per stream, by
// windows.
//
// A frame is a 10-byte header and a payload:
//
//	type (1) | flags (1) | stream ID (4) | length (4) | payload (length bytes)
//
// Types: open (payload: the stream's header), data, window (length: the
// bytes granted, no payload), fin (no more data on this stream from the
// sender), reset (abandon the stream both ways; payload: a reason), ping
// (length: an opaque value echoed back with the ack flag) and go-away (no
// new streams from the receiver of the frame). Clients open odd stream
// IDs, servers even ones. A peer that breaks the protocol (an unknown
// type, an oversized payload, data beyond a window or after a fin, an
// open of the wrong parity or twice) ends the session.
//
// Bounds: the peer's streams open at once on a session (MaxStreams) and
// not yet accepted (AcceptBacklog), and the unread bytes of every stream
// of the sessions sharing a Budget, are limited; opens beyond are reset,
// and a frame that would pass the budget resets the stream holding the
// most unread bytes, each with a reason the peer reads (OnRefuse counts
// them).
//
// Concurrency: a Session's methods are safe for concurrent use; on a
// Stream, one goroutine may read while another writes. The session's read
// loop never waits on a writer, so two busy ends cannot wait on each
// other. Imported by gateway only.
package tunnelmux

import (
	"encoding/binary"
	"fmt"
)

// Frame types.
const (
	typeOpen byte = iota + 1
	typeData
	typeWindow
	typeFin
	typeReset
	typePing
	typeGoAway
	typeMax
)

// flagAck marks a ping's echo.
const flagAck byte = 1

const headerSize = 10

// Limits of the protocol; a peer exceeding them is a protocol error.
const (
	// MaxOpenPayload bounds a stream's header.
	MaxOpenPayload = 4 << 10
	// maxFrame bounds a data frame: a stream's write is cut into frames
	// of at most this size, so that one bulk stream delays the others'
	// frames by at most one such frame.
	maxFrame = 256 << 10
	// maxReset bounds a reset's reason.
	maxReset = 256
)

type frameHeader struct {
	typ, flags byte
	stream     uint32
	length     uint32
}

func (h frameHeader) append(b []byte) []byte {
	b = append(b, h.typ, h.flags)
	b = binary.BigEndian.AppendUint32(b, h.stream)
	return binary.BigEndian.AppendUint32(b, h.length)
}

// parseHeader decodes and checks a frame header: the type is known, and a
// payload's length is within its type's limit.
func parseHeader(b []byte) (frameHeader, error) {
	h := frameHeader{typ: b[0], flags: b[1], stream: binary.BigEndian.Uint32(b[2:6]), length: binary.BigEndian.Uint32(b[6:10])}
	if h.typ == 0 || h.typ >= typeMax {
		return h, fmt.Errorf("unknown frame type %d", h.typ)
	}
	var limit uint32 // the payload's maximum; window, ping, go-away: length is a value
	switch h.typ {
	case typeOpen:
		limit = MaxOpenPayload
	case typeData:
		limit = maxFrame
	case typeReset:
		limit = maxReset
	case typeFin:
		limit = 0
	default:
		return h, nil
	}
	if h.length > limit {
		return h, fmt.Errorf("frame type %d with a payload of %d bytes (at most %d)", h.typ, h.length, limit)
	}
	if h.stream == 0 {
		return h, fmt.Errorf("frame type %d on stream 0", h.typ)
	}
	return h, nil
}

// hasPayload reports whether h's length counts payload bytes.
func (h frameHeader) hasPayload() bool {
	return h.typ == typeOpen || h.typ == typeData || h.typ == typeReset
}
