// Command lossylink joins two TAP devices with a link that loses and
// delays frames, in user space: the WAN of the multi-site scenarios
// (this kernel has no netem). It attaches to two existing persistent TAP
// devices of its network namespace (ip tuntap add ... mode tap); one of
// them may be moved to another namespace afterwards, the link stays up.
//
//	lossylink -a wan0 -b site0 -loss 0.01 -delay 10ms
//
// Each direction drops a frame with probability -loss and delivers the
// others, in order, -delay later. It prints "attached" once both devices
// are open, and its counts when it ends (SIGTERM).
package main

import (
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	a := flag.String("a", "", "one TAP device")
	b := flag.String("b", "", "the other TAP device")
	loss := flag.Float64("loss", 0, "probability of losing a frame, each direction (0 to 1)")
	delay := flag.Duration("delay", 0, "one-way delay added to every frame")
	flag.Parse()
	if *a == "" || *b == "" || *loss < 0 || *loss >= 1 || *delay < 0 {
		fmt.Fprintln(os.Stderr, "usage: lossylink -a TAP -b TAP [-loss P] [-delay D]")
		os.Exit(2)
	}
	fa, err := openTAP(*a)
	if err != nil {
		log.Fatal(err)
	}
	fb, err := openTAP(*b)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("attached")
	var sent, lost atomic.Int64
	go forward(fa, fb, *loss, *delay, &sent, &lost)
	go forward(fb, fa, *loss, *delay, &sent, &lost)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	fmt.Printf("frames forwarded=%d lost=%d\n", sent.Load(), lost.Load())
}

// openTAP attaches to an existing TAP device (no packet information
// header: frames are plain Ethernet).
func openTAP(name string) (*os.File, error) {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	var req struct {
		name  [16]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = syscall.IFF_TAP | syscall.IFF_NO_PI
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		f.Close()
		return nil, fmt.Errorf("attach to %s: %v", name, errno)
	}
	return f, nil
}

type frame struct {
	due  time.Time
	data []byte
}

// forward copies frames from src to dst, losing and delaying them.
func forward(src, dst *os.File, loss float64, delay time.Duration, sent, lost *atomic.Int64) {
	queue := make(chan frame, 4096)
	go func() {
		for f := range queue {
			if d := time.Until(f.due); d > 0 {
				time.Sleep(d)
			}
			dst.Write(f.data)
		}
	}()
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			log.Fatalf("read: %v", err)
		}
		if loss > 0 && rand.Float64() < loss {
			lost.Add(1)
			continue
		}
		sent.Add(1)
		if delay == 0 {
			dst.Write(buf[:n])
			continue
		}
		select {
		case queue <- frame{due: time.Now().Add(delay), data: append([]byte(nil), buf[:n]...)}:
		default:
			lost.Add(1) // the link's queue is full: a real link drops too
		}
	}
}
