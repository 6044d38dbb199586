package dns

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// Worn sockets are replaced (new source ports), and closed once the
// queries waiting on them are answered: the pool never grows.
func TestUpstreamSocketsRotate(t *testing.T) {
	defer func(n int) { rotateAfter = n }(rotateAfter)
	rotateAfter = 3

	up, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	var mu sync.Mutex
	ports := map[int]bool{}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := up.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(mdns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			mu.Lock()
			ports[from.(*net.UDPAddr).Port] = true
			mu.Unlock()
			m := new(mdns.Msg)
			m.SetReply(q)
			m.Answer = []mdns.RR{&mdns.TXT{Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeTXT, Class: mdns.ClassINET}, Txt: []string{q.Question[0].Name}}}
			b, _ := m.Pack()
			up.WriteTo(b, from)
		}
	}()
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skipf("cannot count open files: %v", err)
		}
		return len(ents)
	}
	base := fds()
	f := newForwarder([]string{up.LocalAddr().String()}, 16, 5*time.Second)
	defer f.close()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := range 10 {
		wg.Go(func() {
			for i := range 20 {
				name := fmt.Sprintf("q%d-%d.example.org.", g, i)
				req := new(mdns.Msg)
				req.SetQuestion(name, mdns.TypeTXT)
				b, _ := req.Pack()
				r, err := f.ups[0].exchange(context.Background(), b, req.Question[0])
				if err != nil {
					errs <- err
					return
				}
				if txt, ok := r.Answer[0].(*mdns.TXT); !ok || txt.Txt[0] != name {
					errs <- fmt.Errorf("%s: answer %v", name, r.Answer)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	mu.Lock()
	n := len(ports)
	mu.Unlock()
	if n < 200/rotateAfter {
		t.Fatalf("200 queries came from %d source ports; sockets are replaced every %d", n, rotateAfter)
	}
	// The last retired sockets close as their queries return: poll.
	// (controlplanetest.WaitFor would be an import cycle here.)
	for deadline := time.Now().Add(5 * time.Second); fds() > base+socketsPerUpstream; {
		if time.Now().After(deadline) {
			t.Fatalf("%d open files, %d before: retired sockets stay open", fds(), base)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
