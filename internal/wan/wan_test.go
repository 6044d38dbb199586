package wan

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer echoes lines back until the connection closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	line, err := r.ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("echo: %q %v", line, err)
	}
	return time.Since(start)
}

func TestDelayBytesAndPartition(t *testing.T) {
	target := echoServer(t)
	const delay = 30 * time.Millisecond
	w := New(delay)
	t.Cleanup(func() { w.Close() })
	ctx := context.Background()
	c, err := w.Dial(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	// A round trip crosses the link twice: it can never be faster than
	// twice the one-way delay.
	if rtt := roundTrip(t, c, r); rtt < 2*delay {
		t.Fatalf("round trip %s through a %s link", rtt, delay)
	}
	if up, down := w.Bytes(); up != 5 || down != 5 {
		t.Fatalf("bytes %d up, %d down; want 5 and 5", up, down)
	}

	w.Cut()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("connection survived the cut")
	}
	if _, err := w.Dial(ctx, target); !errors.Is(err, ErrCut) {
		t.Fatalf("dial across a cut link: %v", err)
	}
	w.Heal()
	c2, err := w.Dial(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	roundTrip(t, c2, bufio.NewReader(c2))
}
