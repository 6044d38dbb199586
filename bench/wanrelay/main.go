// Command wanrelay is an emulated WAN hop for scenarios and benchmarks: it
// relays TCP connections from -listen to -target, holding each direction
// for -delay (user space: this kernel has no netem).
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/straitmesh/strait/internal/wan"
)

func main() {
	listen := flag.String("listen", "", "address to accept on")
	target := flag.String("target", "", "address to relay to")
	delay := flag.Duration("delay", 0, "one-way delay, each direction")
	flag.Parse()
	p, err := wan.NewProxyOn(*listen, *target, *delay)
	if err != nil {
		log.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	p.Close()
}
