package gateway

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net"
	"slices"
	"testing"
	"time"
)

// clientHello captures the first flight a real crypto/tls client sends.
func clientHello(t testing.TB, serverName string, alpn ...string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, &tls.Config{ServerName: serverName, NextProtos: alpn, InsecureSkipVerify: true})
		c.SetDeadline(time.Now().Add(time.Second))
		c.Handshake()
		a.Close()
	}()
	b.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 64<<10)
	n, _ := b.Read(buf)
	b.Close()
	return buf[:n]
}

func TestPeekClientHello(t *testing.T) {
	raw := clientHello(t, "servers.site-b.strait", "h2", "strait-tunnel/1")
	r := bufio.NewReaderSize(bytes.NewReader(raw), 64<<10)
	sni, alpn, err := peekClientHello(r)
	if err != nil || sni != "servers.site-b.strait" || !slices.Equal(alpn, []string{"h2", "strait-tunnel/1"}) {
		t.Fatalf("%q %v %v", sni, alpn, err)
	}
	if r.Buffered() != len(raw) {
		t.Fatal("peek consumed bytes")
	}
	if _, _, err := peekClientHello(bufio.NewReader(bytes.NewReader([]byte("GET / HTTP/1.1\r\n\r\n")))); err == nil {
		t.Fatal("HTTP taken for TLS")
	}
}

func FuzzParseClientHello(f *testing.F) {
	raw := clientHello(f, "servers.site-b.strait", "h2")
	f.Add(raw[5:])
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		parseClientHello(b) // must not panic or hang
	})
}
