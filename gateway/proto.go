package gateway

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The tunnel protocol between gateways. Each TLS 1.3 connection (ALPN
// strait-tunnel/2, both sides presenting gateway SVIDs) carries many
// streams multiplexed by internal/tunnelmux, so a new client connection
// costs one frame, not a handshake. Each stream's open frame carries a
// header from the calling gateway; the ingress gateway's first bytes on
// the stream are a status; after an OK, the stream is the client's byte
// stream.
//
//	header:  version (1) | uvarint len | SNI | uvarint len | source ("ns/svc" or "")
//	status:  code (1) | uvarint len | message

const protoVersion = 1

// Status codes of the ingress answer.
const (
	statusOK byte = iota
	statusDenied
	statusUnknown
	statusUnavailable
	statusBadRequest
)

const maxHeaderField = 512

type header struct {
	SNI, Source string
}

func (h header) encode() []byte {
	b := []byte{protoVersion}
	b = binary.AppendUvarint(b, uint64(len(h.SNI)))
	b = append(b, h.SNI...)
	b = binary.AppendUvarint(b, uint64(len(h.Source)))
	return append(b, h.Source...)
}

func readField(r *bufio.Reader) (string, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return "", err
	}
	if n > maxHeaderField {
		return "", fmt.Errorf("header field of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// parseHeader decodes a stream's header, all of it.
func parseHeader(b []byte) (header, error) {
	if len(b) == 0 {
		return header{}, io.ErrUnexpectedEOF
	}
	if b[0] != protoVersion {
		return header{}, fmt.Errorf("tunnel protocol version %d, want %d", b[0], protoVersion)
	}
	var h header
	var err error
	rest := b[1:]
	if h.SNI, rest, err = takeField(rest); err != nil {
		return header{}, err
	}
	if h.Source, rest, err = takeField(rest); err != nil {
		return header{}, err
	}
	if len(rest) > 0 {
		return header{}, errors.New("bytes after the header")
	}
	return h, nil
}

// takeField decodes a length-prefixed field at the start of b and returns
// it and what follows.
func takeField(b []byte) (string, []byte, error) {
	n, k := binary.Uvarint(b)
	switch {
	case k <= 0:
		return "", nil, errors.New("bad header field length")
	case k != len(binary.AppendUvarint(nil, n)):
		return "", nil, errors.New("header field length not in its shortest form")
	case n > maxHeaderField:
		return "", nil, fmt.Errorf("header field of %d bytes", n)
	case uint64(len(b)-k) < n:
		return "", nil, io.ErrUnexpectedEOF
	}
	end := k + int(n)
	return string(b[k:end]), b[end:], nil
}

// statusOKBytes is an OK status.
var statusOKBytes = []byte{statusOK, 0}

func writeStatus(w io.Writer, code byte, msg string) error {
	b := []byte{code}
	b = binary.AppendUvarint(b, uint64(len(msg)))
	_, err := w.Write(append(b, msg...))
	return err
}

// errRefused is a refusal by the ingress gateway (not worth a retry on
// another gateway: they share the configuration).
type errRefused struct {
	code byte
	msg  string
}

func (e *errRefused) Error() string { return e.msg }

func readStatus(r *bufio.Reader) error {
	code, err := r.ReadByte()
	if err != nil {
		return err
	}
	msg, err := readField(r)
	if err != nil {
		return err
	}
	switch code {
	case statusOK:
		return nil
	case statusUnavailable:
		return errors.New(msg) // another gateway may do better
	}
	return &errRefused{code, msg}
}
