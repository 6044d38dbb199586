package gateway_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/mtls"
)

// BenchmarkDataPath compares, on loopback in one process, three ways for a
// client to reach a TCP service:
//   - direct: a plain TCP connection;
//   - proxy: a plain TCP relay (the floor of anything that terminates the
//     client's connection);
//   - mtls: a TLS 1.3 connection with SPIFFE certificates on both sides,
//     made for each client connection, to a relay in front of the service;
//   - mtls-gateways: the design without pooled tunnels, hop for hop: a
//     plain TCP relay (the egress) that opens a new mTLS connection, with
//     a full handshake, to a second relay (the ingress) for each client
//     connection;
//   - gateways: through two Strait gateways (egress on the virtual IP, a
//     pooled multiplexed tunnel over mTLS, ingress, the instance).
//
// Each reports single-stream throughput (64 MiB), the round trip of a
// 1-byte request on an open connection (p50/p99 of 2,000), and new
// connections per second (connect, one round trip, close; 8 clients, 2s).
func BenchmarkDataPath(b *testing.B) {
	dialers := benchPaths(b)
	for _, path := range []string{"direct", "proxy", "mtls", "mtls-gateways", "gateways"} {
		dial := dialers[path]
		b.Run("path="+path, func(b *testing.B) {
			for b.Loop() {
				b.ReportMetric(throughput(b, dial), "MB/s")
				p50, p99 := roundTrips(b, dial)
				b.ReportMetric(float64(p50.Microseconds()), "rtt-p50-us")
				b.ReportMetric(float64(p99.Microseconds()), "rtt-p99-us")
				cps, cpu := connsPerSecond(b, dial, 2*time.Second)
				b.ReportMetric(cps, "conns/s")
				b.ReportMetric(cpu, "cpu-us/conn")
			}
		})
	}
}

// benchPaths stands up the sinks and every path to them, and returns a
// dialer per path: dial("echo") or dial("discard").
func benchPaths(b *testing.B) map[string]func(kind string) (net.Conn, error) {
	echo, discard := startSinks(b)
	dialers := map[string]func(kind string) (net.Conn, error){
		"direct": func(kind string) (net.Conn, error) {
			return net.Dial("tcp", map[string]string{"echo": echo, "discard": discard}[kind])
		},
	}
	plain := func(target string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		return relay(b, ln, target)
	}
	proxyEcho, proxyDiscard := plain(echo), plain(discard)
	dialers["proxy"] = func(kind string) (net.Conn, error) {
		return net.Dial("tcp", map[string]string{"echo": proxyEcho, "discard": proxyDiscard}[kind])
	}
	tlsEcho, tlsDiscard, clientTLS := tlsSinks(b, echo, discard)
	dialers["mtls"] = func(kind string) (net.Conn, error) {
		return tls.Dial("tcp", map[string]string{"echo": tlsEcho, "discard": tlsDiscard}[kind], clientTLS)
	}
	egress := func(target string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		return relayDial(b, ln, func() (net.Conn, error) { return tls.Dial("tcp", target, clientTLS) })
	}
	mgwEcho, mgwDiscard := egress(tlsEcho), egress(tlsDiscard)
	dialers["mtls-gateways"] = func(kind string) (net.Conn, error) {
		return net.Dial("tcp", map[string]string{"echo": mgwEcho, "discard": mgwDiscard}[kind])
	}
	gwEcho, gwDiscard := gatewayPath(b, echo, discard)
	dialers["gateways"] = func(kind string) (net.Conn, error) {
		return net.Dial("tcp", map[string]string{"echo": gwEcho, "discard": gwDiscard}[kind])
	}
	return dialers
}

// BenchmarkNewConnections compares new connections per second through the
// gateways with the per-connection mTLS design (and the plain proxy, the
// floor), interleaved: rounds of one second per path, one path after the
// other, so that this machine's slow spells fall on every path alike. It
// reports each path's median rate and CPU per connection, and the median
// of the rounds' ratios gateways ÷ mtls-gateways. With -cpuprofile, focus
// on the gateway package to profile the gateways alone.
func BenchmarkNewConnections(b *testing.B) {
	dialers := benchPaths(b)
	paths := []string{"gateways", "mtls-gateways", "proxy"}
	const rounds = 9
	for b.Loop() {
		rates, cpus := map[string][]float64{}, map[string][]float64{}
		var ratios []float64
		for range rounds {
			for _, path := range paths {
				cps, cpu := connsPerSecond(b, dialers[path], time.Second)
				rates[path] = append(rates[path], cps)
				cpus[path] = append(cpus[path], cpu)
			}
			n := len(rates["gateways"]) - 1
			ratios = append(ratios, rates["gateways"][n]/rates["mtls-gateways"][n])
		}
		for _, path := range paths {
			b.ReportMetric(median(rates[path]), path+"-conns/s")
			b.ReportMetric(median(cpus[path]), path+"-cpu-us/conn")
		}
		b.ReportMetric(median(ratios), "gateways/mtls-gateways")
		slices.Sort(ratios)
		b.ReportMetric(ratios[0], "ratio-min")
		b.ReportMetric(ratios[len(ratios)-1], "ratio-max")
	}
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// startSinks runs an echo server and a discard server (which answers "ok"
// once the client has closed its side).
func startSinks(b testing.TB) (echo, discard string) {
	echo = net.JoinHostPort("127.0.0.1", strconv.Itoa(echoServer(b)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
				c.Write([]byte("ok"))
			}()
		}
	}()
	return echo, ln.Addr().String()
}

// tlsSinks puts TLS 1.3 servers with SPIFFE certificates in front of the
// sinks and returns their addresses and a client config.
func tlsSinks(b testing.TB, echo, discard string) (string, string, *tls.Config) {
	td := spiffeid.RequireTrustDomainFromString("bench.strait")
	root, err := ca.Generate(td, time.Now(), 0)
	if err != nil {
		b.Fatal(err)
	}
	ident := func(path string) *mtls.Identity {
		key, err := ca.NewKey()
		if err != nil {
			b.Fatal(err)
		}
		cert, err := root.SignX509SVID(spiffeid.RequireFromPath(td, path), key.Public(), time.Now(), time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		id := mtls.NewIdentity(x509bundle.FromX509Authorities(td, []*x509.Certificate{root.Certificate()}), nil)
		if err := id.SetSVID([]*x509.Certificate{cert}, key); err != nil {
			b.Fatal(err)
		}
		return id
	}
	server := mtls.ServerConfig(ident("/server"), mtls.RequireClientSVID, nil)
	front := func(target string) string {
		ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
		if err != nil {
			b.Fatal(err)
		}
		return relay(b, ln, target)
	}
	return front(echo), front(discard), mtls.ClientConfig(ident("/client"), nil)
}

// relay serves ln, relaying each connection to a new one to target: a
// plain TCP proxy (two TCP connections per client connection, as through
// a gateway) when ln is plain, a per-connection mTLS proxy when it is TLS.
func relay(b testing.TB, ln net.Listener, target string) string {
	return relayDial(b, ln, func() (net.Conn, error) { return net.Dial("tcp", target) })
}

// relayDial serves ln, relaying each connection to a new one from dial.
func relayDial(b testing.TB, ln net.Listener, dial func() (net.Conn, error)) string {
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := dial()
				if err != nil {
					return
				}
				defer up.Close()
				go func() { io.Copy(up, c); closeWrite(up) }()
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// gatewayPath stands up two sites with a gateway each, exports the sinks
// from B to A, and returns their addresses on A's virtual IPs.
func gatewayPath(b *testing.B, echo, discard string) (string, string) {
	w := wan.New(0)
	b.Cleanup(func() { w.Close() })
	a, s := startSite(b, "site-a", w), startSite(b, "site-b", w)
	federate(b, a, s)
	a.startGateway(b, "gw-a", nil)
	s.startGateway(b, "gw-b", nil)
	out := map[string]string{}
	for name, addr := range map[string]string{"echo": echo, "discard": discard} {
		_, portS, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(portS)
		register(b, s, "bench", name, name+"-1", port, apipb.Protocol_PROTOCOL_TCP)
		exportTo(b, s, "bench", name, "site-a")
		controlplanetest.WaitFor(b, 15*time.Second, func() error {
			vip, err := resolve(b, a, name+".bench.site-b.mesh")
			out[name] = net.JoinHostPort(vip, portS)
			return err
		})
	}
	allow(b, s, "site-a", "bench/*")
	controlplanetest.WaitFor(b, 15*time.Second, func() error {
		c, err := net.Dial("tcp", out["echo"])
		if err != nil {
			return err
		}
		defer c.Close()
		if err := rtt(c, make([]byte, 1)); err != nil {
			return err
		}
		d, err := net.Dial("tcp", out["discard"]) // its listener is up too
		if err != nil {
			return err
		}
		return d.Close()
	})
	return out["echo"], out["discard"]
}

func rtt(c net.Conn, buf []byte) error {
	if _, err := c.Write(buf[:1]); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf[:1])
	return err
}

func throughput(b *testing.B, dial func(string) (net.Conn, error)) float64 {
	const total = 64 << 20
	c, err := dial("discard")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 128<<10)
	start := time.Now()
	for sent := 0; sent < total; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	closeWrite(c)
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		b.Fatalf("no acknowledgement: %v", err)
	}
	return float64(total) / time.Since(start).Seconds() / 1e6
}

func roundTrips(b *testing.B, dial func(string) (net.Conn, error)) (p50, p99 time.Duration) {
	c, err := dial("echo")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1)
	lat := make([]time.Duration, 2000)
	for i := range lat {
		start := time.Now()
		if err := rtt(c, buf); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(start)
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}

// connsPerSecond also returns the CPU time the whole process (client,
// gateways, servers, sinks) spent per connection, in microseconds: steadier
// than the rate on a noisy machine, for comparing two builds.
func connsPerSecond(b *testing.B, dial func(string) (net.Conn, error), d time.Duration) (perSecond, cpuPerConn float64) {
	const workers = 8
	cpu0 := cpuTime()
	var n, failed atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1)
			for time.Now().Before(end) {
				c, err := dial("echo")
				if err == nil {
					err = rtt(c, buf)
					c.Close()
				}
				if err != nil {
					failed.Add(1)
					continue
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Errorf("%d connections failed", f)
	}
	return float64(n.Load()) / d.Seconds(), float64((cpuTime() - cpu0).Microseconds()) / float64(n.Load())
}

// cpuTime is the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
