package tunnelmux

import (
	"io"
	"net"
	"testing"
	"time"
)

// FuzzSession feeds a server session whatever a peer might send: it must
// neither panic nor hang, and it ends when the peer goes away.
func FuzzSession(f *testing.F) {
	frame := func(h frameHeader, p []byte) []byte { return append(h.append(nil), p...) }
	open := frame(frameHeader{typ: typeOpen, stream: 1, length: 3}, []byte("hdr"))
	f.Add(open)
	f.Add(append(append(open, frame(frameHeader{typ: typeData, stream: 1, length: 2}, []byte("hi"))...), frame(frameHeader{typ: typeFin, stream: 1}, nil)...))
	f.Add(append(open, frame(frameHeader{typ: typeReset, stream: 1, length: 1}, []byte("x"))...))
	f.Add(frame(frameHeader{typ: typePing, length: 7}, nil))
	f.Add(append(frame(frameHeader{typ: typeGoAway}, nil), frame(frameHeader{typ: typeWindow, stream: 1, length: 1 << 31}, nil)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		peer, conn := net.Pipe()
		s := Server(conn, Config{Window: 1 << 10, AcceptBacklog: 4, MaxPending: 4 << 10})
		defer s.Close()
		go func() {
			for {
				st, err := s.Accept()
				if err != nil {
					return
				}
				go func() {
					io.Copy(st, st) // echo: exercises windows and writes
					st.Close()
				}()
			}
		}()
		go io.Copy(io.Discard, peer)
		peer.Write(data)
		peer.Close()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Fatal("the session outlived its peer")
		}
	})
}
