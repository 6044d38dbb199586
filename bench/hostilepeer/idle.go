package hostilepeer

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// IdleMode is what an idle connection does before going quiet.
type IdleMode int

const (
	// IdleTCP connects and sends nothing.
	IdleTCP IdleMode = iota
	// IdlePartialHello sends the first bytes of a TLS record and stops.
	IdlePartialHello
	// IdleTLS completes a TLS handshake (ALPN h2, any certificate
	// accepted) and sends nothing more.
	IdleTLS
	// IdleH2 completes a TLS handshake, sends the HTTP/2 preface and an
	// empty SETTINGS frame, and goes quiet: what a client that opened a
	// connection and never used it looks like.
	IdleH2
)

func (m IdleMode) String() string {
	return [...]string{"tcp", "partial-hello", "tls", "h2"}[m]
}

// ParseIdleMode parses a mode's name (as String writes it).
func ParseIdleMode(s string) (IdleMode, error) {
	for m := IdleTCP; m <= IdleH2; m++ {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("idle mode %q: want tcp, partial-hello, tls or h2", s)
}

// Idle is a set of idle connections held open.
type Idle struct {
	// Opened is how many connections were set up (in their mode).
	Opened int
	// Failed is how many could not be; FirstError is an example.
	Failed     int
	FirstError error
	open       atomic.Int64
	conns      []net.Conn
	wg         sync.WaitGroup
	once       sync.Once
}

// Open is how many of the connections are still open (the other end has
// not closed them).
func (i *Idle) Open() int { return int(i.open.Load()) }

// Close closes every connection and waits for their watchers.
func (i *Idle) Close() {
	i.once.Do(func() {
		for _, c := range i.conns {
			c.Close()
		}
		i.wg.Wait()
	})
}

// HoldIdle opens n connections to addr in mode (sni is the TLS server
// name, for the TLS modes and the partial hello's intent; it may be
// empty) and holds them open, idle, until Close or until ctx ends. Each
// connection has a watcher that notices when the other end closes it.
// Setting up the connections is bounded by ctx.
func HoldIdle(ctx context.Context, addr string, n int, mode IdleMode, sni string) *Idle {
	idle := &Idle{}
	var mu sync.Mutex
	each(ctx, n, func(int) {
		c, err := dialIdle(ctx, addr, mode, sni)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			idle.Failed++
			if idle.FirstError == nil {
				idle.FirstError = err
			}
			return
		}
		idle.Opened++
		idle.conns = append(idle.conns, c)
		idle.open.Add(1)
		idle.wg.Add(1)
		go func() { // the watcher: a read returns when the other end closes
			defer idle.wg.Done()
			defer idle.open.Add(-1)
			buf := make([]byte, 4096)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
	})
	context.AfterFunc(ctx, idle.Close)
	return idle
}

// idleSetup bounds each connection's setup.
const idleSetup = 10 * time.Second

func dialIdle(ctx context.Context, addr string, mode IdleMode, sni string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, idleSetup)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	switch mode {
	case IdleTCP:
		return raw, nil
	case IdlePartialHello:
		// A handshake record header and the start of a ClientHello.
		if _, err := raw.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}); err != nil {
			raw.Close()
			return nil, err
		}
		return raw, nil
	}
	c := tls.Client(raw, &tls.Config{ServerName: sni, NextProtos: []string{"h2"}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	if mode == IdleH2 {
		if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
			c.Close()
			return nil, err
		}
		fr := http2.NewFramer(c, nil)
		if err := fr.WriteSettings(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}
