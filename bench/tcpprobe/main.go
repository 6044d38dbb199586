// Command tcpprobe measures a TCP path for benchmarks and scenarios: the
// round trip of a 1-byte request on an open connection (p50/p99) and new
// connections per second (connect, one round trip, close). With -serve,
// it is the echo server at the other end; with -connect, it only checks
// that a TCP connection opens; with -resolve, it prints the A record of a
// name from a DNS server.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

func main() {
	serve := flag.String("serve", "", "run the echo server on this address")
	addr := flag.String("addr", "", "the echo server to measure")
	n := flag.Int("rtt", 5000, "round trips to time")
	dur := flag.Duration("conns", 3*time.Second, "how long to open new connections")
	workers := flag.Int("workers", 8, "concurrent clients opening connections")
	connect := flag.Bool("connect", false, "only check that a connection to -addr opens")
	resolve := flag.String("resolve", "", "print the A record of this name (from -dns)")
	dnsAddr := flag.String("dns", "", "DNS server for -resolve")
	flag.Parse()
	if *resolve != "" {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(*resolve), dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, *dnsAddr)
		if err != nil {
			log.Fatal(err)
		}
		if len(r.Answer) != 1 {
			log.Fatalf("%s: %s, %d answers", *resolve, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		a, ok := r.Answer[0].(*dns.A)
		if !ok {
			log.Fatalf("%s: %s", *resolve, r.Answer[0])
		}
		fmt.Println(a.A)
		return
	}
	if *connect {
		c, err := net.DialTimeout("tcp", *addr, 3*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		c.Close()
		return
	}
	if *serve != "" {
		ln, err := net.Listen("tcp", *serve)
		if err != nil {
			log.Fatal(err)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				log.Fatal(err)
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}
	c, err := net.Dial("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 1)
	lat := make([]time.Duration, *n)
	for i := range lat {
		start := time.Now()
		if err := rtt(c, buf); err != nil {
			log.Fatal(err)
		}
		lat[i] = time.Since(start)
	}
	c.Close()
	slices.Sort(lat)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	end := time.Now().Add(*dur)
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 1)
			for time.Now().Before(end) {
				c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
				if err == nil {
					err = rtt(c, b)
					c.Close()
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("rtt_p50_us=%d rtt_p99_us=%d conns_per_s=%.0f failed=%d\n",
		lat[len(lat)/2].Microseconds(), lat[len(lat)*99/100].Microseconds(), float64(ok.Load())/dur.Seconds(), failed.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Printf("first_error=%q\n", e)
	}
}

func rtt(c net.Conn, buf []byte) error {
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf)
	return err
}
