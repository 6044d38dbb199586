package hostilepeer

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// DNSFloodResult counts a flood's queries and the answers that came back.
type DNSFloodResult struct {
	Sent, Answered int
	// Rcodes counts the answers by response code (NOERROR, SERVFAIL, ...).
	Rcodes  map[string]int
	Elapsed time.Duration
}

func (r DNSFloodResult) String() string {
	return fmt.Sprintf("sent=%d answered=%d in %s %v", r.Sent, r.Answered, r.Elapsed.Round(time.Millisecond), r.Rcodes)
}

// dnsSockets spreads a flood over several source ports, as many clients
// would be.
const dnsSockets = 8

// DNSFlood sends n queries over UDP to addr, for distinct names under
// domain (out of the mesh domain, so that a server with upstreams
// forwards each), at about rate per second, then waits up to linger for
// late answers. It stops early when ctx ends.
func DNSFlood(ctx context.Context, addr string, n, rate int, domain string, linger time.Duration) (DNSFloodResult, error) {
	res := DNSFloodResult{Rcodes: map[string]int{}}
	var conns []*net.UDPConn
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return res, fmt.Errorf("dns flood: %w", err)
	}
	for range dnsSockets {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return res, fmt.Errorf("dns flood: %w", err)
		}
		c.SetReadBuffer(4 << 20)
		conns = append(conns, c)
	}
	var answered atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65535)
			for {
				k, err := c.Read(buf)
				if err != nil {
					return
				}
				var m dns.Msg
				if m.Unpack(buf[:k]) != nil {
					continue
				}
				answered.Add(1)
				mu.Lock()
				res.Rcodes[dns.RcodeToString[m.Rcode]]++
				mu.Unlock()
			}
		}()
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	domain = dns.Fqdn(strings.TrimPrefix(domain, "."))
	start := time.Now()
	interval := time.Second / time.Duration(max(rate, 1))
	msg := new(dns.Msg)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if due := start.Add(time.Duration(i) * interval); time.Until(due) > time.Millisecond {
			time.Sleep(time.Until(due)) // pacing, not waiting for a condition
		}
		msg.SetQuestion(fmt.Sprintf("q%d.%s", i, domain), dns.TypeA)
		msg.Id = uint16(i)
		b, err := msg.Pack()
		if err != nil {
			return res, err
		}
		if _, err := conns[i%len(conns)].Write(b); err == nil {
			res.Sent++
		}
	}
	lctx, cancel := context.WithTimeout(ctx, linger)
	defer cancel()
	for lctx.Err() == nil && int(answered.Load()) < res.Sent {
		select {
		case <-lctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	res.Elapsed = time.Since(start)
	res.Answered = int(answered.Load())
	mu.Lock()
	defer mu.Unlock()
	rc := make(map[string]int, len(res.Rcodes))
	for k, v := range res.Rcodes {
		rc[k] = v
	}
	res.Rcodes = rc
	return res, nil
}

// UpstreamMode is how a FakeUpstream answers.
type UpstreamMode int

const (
	// UpstreamSilent reads queries and never answers.
	UpstreamSilent UpstreamMode = iota
	// UpstreamTC answers every UDP query with an empty, truncated (TC)
	// reply, and the same query over TCP with TXTSize bytes of TXT
	// records: what makes a forwarder that ignores the requester's UDP
	// size amplify (the audit's H4).
	UpstreamTC
)

// FakeUpstream is a DNS upstream on loopback (UDP and TCP on one port).
type FakeUpstream struct {
	Addr string
	// Queries counts the UDP queries received.
	Queries atomic.Int64
	pc      net.PacketConn
	ln      net.Listener
	wg      sync.WaitGroup
	once    sync.Once
}

// NewFakeUpstream starts a fake upstream on addr (host:port, port 0 picks
// one) until Close or until ctx ends; txtSize is the TCP answer's size in
// UpstreamTC mode.
func NewFakeUpstream(ctx context.Context, addr string, mode UpstreamMode, txtSize int) (*FakeUpstream, error) {
	var pc net.PacketConn
	var ln net.Listener
	// With port 0, the UDP port picked may be taken for TCP: pick again.
	for try := 0; ; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return nil, fmt.Errorf("fake upstream: %w", err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		if _, port, _ := net.SplitHostPort(addr); port != "0" || try == 20 {
			return nil, fmt.Errorf("fake upstream: %w", err)
		}
	}
	u := &FakeUpstream{Addr: pc.LocalAddr().String(), pc: pc, ln: ln}
	u.wg.Add(2)
	go func() {
		defer u.wg.Done()
		buf := make([]byte, 65535)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			u.Queries.Add(1)
			if mode != UpstreamTC {
				continue
			}
			var q dns.Msg
			if q.Unpack(buf[:k]) != nil {
				continue
			}
			r := new(dns.Msg)
			r.SetReply(&q)
			r.Truncated = true
			if b, err := r.Pack(); err == nil {
				pc.WriteTo(b, from)
			}
		}
	}()
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				if mode != UpstreamTC {
					return
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				dc := &dns.Conn{Conn: c}
				q, err := dc.ReadMsg()
				if err != nil || len(q.Question) == 0 {
					return
				}
				r := new(dns.Msg)
				r.SetReply(q)
				for size := 0; size < txtSize; size += 255 {
					r.Answer = append(r.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
						Txt: []string{strings.Repeat("x", 250)}})
				}
				dc.WriteMsg(r)
			}()
		}
	}()
	context.AfterFunc(ctx, u.Close)
	return u, nil
}

// Close stops the upstream.
func (u *FakeUpstream) Close() {
	u.once.Do(func() {
		u.pc.Close()
		u.ln.Close()
		u.wg.Wait()
	})
}
