package hostilepeer

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/internal/tunnelmux"
	"github.com/straitmesh/strait/meshname"
)

// Tunnel is a tunnel from the fake peer's gateway to a real gateway.
type Tunnel struct {
	*tunnelmux.Session
}

// Tunnel opens a tunnel to a real gateway's WAN address as the fake
// peer's gateway: TLS 1.3 with ALPN strait-tunnel/2 and the gateway SVID.
// The real gateway's certificate is checked against the bundle of the
// last invite Accept redeemed (not at all before one). It is closed by
// Close or when ctx ends.
func (p *Peer) Tunnel(ctx context.Context, wanAddr string) (*Tunnel, error) {
	p.mu.Lock()
	td, bundle := p.victimTD, p.victimBundle
	p.mu.Unlock()
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{meshname.TunnelALPN},
		Certificates:       []tls.Certificate{p.Gateway},
		InsecureSkipVerify: true, // checked below, by SPIFFE ID
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if bundle == nil {
				return nil
			}
			id, _, err := x509svid.ParseAndVerify(raw, bundle)
			if err != nil {
				return err
			}
			if id.TrustDomain() != td {
				return fmt.Errorf("%s is not of %s", id, td)
			}
			return nil
		},
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := d.DialContext(dctx, "tcp", wanAddr)
	if err != nil {
		return nil, fmt.Errorf("tunnel to %s: %w", wanAddr, err)
	}
	if c.(*tls.Conn).ConnectionState().NegotiatedProtocol != meshname.TunnelALPN {
		c.Close()
		return nil, fmt.Errorf("tunnel to %s: no tunnel protocol negotiated", wanAddr)
	}
	t := &Tunnel{tunnelmux.Client(c, tunnelmux.Config{})}
	// With TLS 1.3 a refused client certificate shows only on the first
	// read: one stream (for an empty name, refused) proves the tunnel up.
	st, _, _, err := t.Open(dctx, "", "")
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("tunnel to %s: %w", wanAddr, err)
	}
	st.Close()
	stop := context.AfterFunc(ctx, func() { t.Close() })
	p.onClose(func() { stop(); t.Close() })
	return t, nil
}

// Header is a stream header of the tunnel protocol (gateway/proto.go):
// version 1, then the SNI and the source, each a uvarint length and bytes.
func Header(sni, source string) []byte {
	b := []byte{1}
	b = binary.AppendUvarint(b, uint64(len(sni)))
	b = append(b, sni...)
	b = binary.AppendUvarint(b, uint64(len(source)))
	return append(b, source...)
}

// Status codes of the ingress gateway's answer (gateway/proto.go).
const (
	StatusOK byte = iota
	StatusDenied
	StatusUnknown
	StatusUnavailable
	StatusBadRequest
)

// ReadStatus reads the ingress gateway's answer on a stream.
func ReadStatus(r *bufio.Reader) (code byte, msg string, err error) {
	if code, err = r.ReadByte(); err != nil {
		return 0, "", err
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, "", err
	}
	if n > 4096 {
		return 0, "", fmt.Errorf("status message of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, "", err
	}
	return code, string(b), nil
}

// Open opens a stream for sni (claiming source, "" for none) and reads
// the answer; the stream is returned open whatever the answer.
func (t *Tunnel) Open(ctx context.Context, sni, source string) (*tunnelmux.Stream, byte, string, error) {
	st, err := t.Session.Open(Header(sni, source), nil)
	if err != nil {
		return nil, 0, "", err
	}
	deadline := time.Now().Add(15 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	st.SetReadDeadline(deadline)
	code, msg, err := ReadStatus(bufio.NewReaderSize(st, 64))
	st.SetReadDeadline(time.Time{})
	if err != nil {
		st.Close()
		return nil, 0, "", err
	}
	return st, code, msg, nil
}

// FloodResult counts the streams of a flood by the answer they got.
type FloodResult struct {
	Opened, OK, Refused, Failed int
	// FirstRefusal and FirstError are examples, for logs.
	FirstRefusal string
	FirstError   error
}

func (r FloodResult) String() string {
	return fmt.Sprintf("opened=%d ok=%d refused=%d failed=%d", r.Opened, r.OK, r.Refused, r.Failed)
}

type floodCounter struct {
	mu sync.Mutex
	r  FloodResult
}

func (f *floodCounter) add(code byte, msg string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case err != nil:
		f.r.Failed++
		if f.r.FirstError == nil {
			f.r.FirstError = err
		}
	case code == StatusOK:
		f.r.Opened++
		f.r.OK++
	default:
		f.r.Opened++
		f.r.Refused++
		if f.r.FirstRefusal == "" {
			f.r.FirstRefusal = msg
		}
	}
}

// floodWorkers bounds the streams a flood has in flight at once.
const floodWorkers = 64

// each runs fn(i) for i in [0, n) on floodWorkers goroutines, until ctx ends.
func each(ctx context.Context, n int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, floodWorkers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}

// SNIFlood opens n streams, each for a distinct SNI that no site exports
// (tcp.x<i>.<namespace>.<td>, td the real site's), and closes each after
// its answer: what the audit's M5 did to the gateway's metric series.
func (t *Tunnel) SNIFlood(ctx context.Context, td, namespace string, n int) FloodResult {
	var fc floodCounter
	each(ctx, n, func(i int) {
		st, code, msg, err := t.Open(ctx, meshname.SNI("tcp", fmt.Sprintf("x%d", i), namespace, td), "")
		if st != nil {
			st.Close()
		}
		fc.add(code, msg, err)
	})
	return fc.r
}

// StreamFlood opens n streams for sni and holds those the gateway
// accepted open until ctx ends (so the flood's cost is visible while it
// lasts). It returns once all n have an answer.
func (t *Tunnel) StreamFlood(ctx context.Context, sni string, n int) FloodResult {
	var fc floodCounter
	each(ctx, n, func(int) {
		st, code, msg, err := t.Open(ctx, sni, "")
		fc.add(code, msg, err)
		if st != nil {
			context.AfterFunc(ctx, func() { st.Close() })
		}
	})
	return fc.r
}

// Push opens streams streams for sni and writes size bytes on each, never
// reading: against an instance that does not read either, the bytes pile
// up in the gateway (the audit's M4). It returns when every stream has
// written all, failed, or ctx ended, and closes the streams when ctx ends.
func (t *Tunnel) Push(ctx context.Context, sni string, streams, size int) (FloodResult, int64) {
	var fc floodCounter
	var written atomic.Int64
	chunk := make([]byte, 64<<10)
	each(ctx, streams, func(int) {
		st, code, msg, err := t.Open(ctx, sni, "")
		fc.add(code, msg, err)
		if st == nil {
			return
		}
		context.AfterFunc(ctx, func() { st.Close() })
		if code != StatusOK {
			st.Close()
			return
		}
		for left := size; left > 0 && ctx.Err() == nil; {
			st.SetWriteDeadline(time.Now().Add(2 * time.Second))
			n, err := st.Write(chunk[:min(left, len(chunk))])
			written.Add(int64(n))
			left -= n
			if err != nil {
				return // a full window times out: the rest would block
			}
		}
	})
	return fc.r, written.Load()
}

// SiteTD is the trust domain of the site whose invite was redeemed last.
func (p *Peer) SiteTD() spiffeid.TrustDomain {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.victimTD
}
