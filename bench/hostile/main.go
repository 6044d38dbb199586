// Command hostile is the attacker of issue 14's measurements and of the
// hostile-peer scenario, a command around bench/hostilepeer (test
// tooling, never shipped).
//
//	hostile bench    -strait ./bin/strait     the Measure table (see bench.go)
//	hostile peer     -invite TOKEN -listen ADDR [-script flood -n 66000] [-gw WAN -sniflood N -streams N -stream-sni SNI] -for 30s
//	hostile idle     -addr ADDR -n 2000 -mode h2 [-sni servers.<td>] -for 30s
//	hostile dnsflood -addr ADDR -n 45000 -rate 15000 [-domain example.org]
//	hostile upstream -listen ADDR -mode silent|tc -for 30s
//	hostile rss      -strait ./bin/strait [-idle 10s -calls 2000]  gateways' VmRSS/VmHWM idle and after a load (see rss.go)
//
// Every attack is bounded in count and in time (-for), and everything is
// closed when the command ends. Each prints one line per result, "key=value"
// words, for scripts and scenarios to read.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/straitmesh/strait/bench/hostilepeer"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hostile bench|peer|idle|dnsflood|upstream|rss [flags] (see the package doc)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cmds := map[string]func(context.Context, []string) error{
		"bench": runBench, "peer": runPeer, "idle": runIdle, "dnsflood": runDNSFlood, "upstream": runUpstream, "rss": runRSS,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "hostile: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := run(ctx, os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(1)
	}
}

// hold waits for d or for ctx.
func hold(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// readArg returns s, or the contents of the file @s names.
func readArg(s string) (string, error) {
	if name, ok := strings.CutPrefix(s, "@"); ok {
		b, err := os.ReadFile(name)
		return strings.TrimSpace(string(b)), err
	}
	return s, nil
}

func runPeer(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("peer", flag.ExitOnError)
	site := fs.String("site", "flood", "the fake site's name (trust domain <site>.strait)")
	invite := fs.String("invite", "", "a federation token of the real site (or @file)")
	name := fs.String("name", "", "the peer name to ask for (default: the invite's)")
	listen := fs.String("listen", "127.0.0.1:0", "the fake peer server's address (announced in the Accept)")
	script := fs.String("script", "flood", "what the fake peer replicates: flood, never, gateways, churn")
	n := fs.Int("n", 66000, "services for flood and churn; bytes for never")
	gateways := fs.String("gateways", "", "comma-separated gateway addresses for -script gateways")
	gw := fs.String("gw", "", "a real gateway's WAN address, for the tunnel attacks")
	sniflood := fs.Int("sniflood", 0, "streams with distinct unknown SNIs")
	streams := fs.Int("streams", 0, "streams held open for -stream-sni")
	streamSNI := fs.String("stream-sni", "", "the SNI of -streams and -push")
	push := fs.Int("push", 0, "streams each pushing -push-bytes to -stream-sni")
	pushBytes := fs.Int("push-bytes", 16<<20, "bytes per pushing stream")
	dur := fs.Duration("for", 30*time.Second, "how long to keep everything up")
	fs.Parse(args)
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()
	tok, err := readArg(*invite)
	if err != nil {
		return err
	}
	p, err := hostilepeer.New(*site)
	if err != nil {
		return err
	}
	defer p.Close()
	var sc hostilepeer.Script
	switch *script {
	case "flood":
		sc = hostilepeer.Flood(*n)
	case "never":
		sc = hostilepeer.NeverFinish(*n)
	case "gateways":
		sc = hostilepeer.Gateways(strings.Split(*gateways, ","))
	case "churn":
		sc = hostilepeer.Churn(*n, 10, 2*time.Second)
	default:
		return fmt.Errorf("unknown script %q", *script)
	}
	srv, err := p.Serve(ctx, *listen, sc)
	if err != nil {
		return err
	}
	got, err := p.Accept(ctx, tok, hostilepeer.AcceptRequest{Name: *name, Addresses: []string{srv.Addr}})
	if err != nil {
		return err
	}
	fmt.Printf("accepted name=%s server=%s script=%s\n", got, srv.Addr, *script)
	if *gw != "" && (*sniflood > 0 || *streams > 0 || *push > 0) {
		var tun *hostilepeer.Tunnel
		// The real gateway learns the new peer's bundle over xDS.
		for deadline := time.Now().Add(20 * time.Second); ; {
			if tun, err = p.Tunnel(ctx, *gw); err == nil || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			hold(ctx, 250*time.Millisecond)
		}
		if err != nil {
			return err
		}
		if *sniflood > 0 {
			r := tun.SNIFlood(ctx, p.SiteTD().Name(), "nothing", *sniflood)
			fmt.Printf("sniflood %s\n", r)
		}
		if *streams > 0 {
			r := tun.StreamFlood(ctx, *streamSNI, *streams)
			fmt.Printf("streams %s\n", r)
		}
		if *push > 0 {
			r, w := tun.Push(ctx, *streamSNI, *push, *pushBytes)
			fmt.Printf("push %s written=%d\n", r, w)
		}
	}
	<-ctx.Done()
	fmt.Printf("done streams=%d acked=%d\n", srv.Streams(), srv.Acked())
	return nil
}

func runIdle(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "", "where to connect")
	n := fs.Int("n", 2000, "connections")
	mode := fs.String("mode", "h2", "tcp, partial-hello, tls or h2")
	sni := fs.String("sni", "", "TLS server name")
	dur := fs.Duration("for", 30*time.Second, "how long to hold them")
	fs.Parse(args)
	m, err := hostilepeer.ParseIdleMode(*mode)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()
	idle := hostilepeer.HoldIdle(ctx, *addr, *n, m, *sni)
	fmt.Printf("idle opened=%d failed=%d first_error=%q\n", idle.Opened, idle.Failed, fmt.Sprint(idle.FirstError))
	<-ctx.Done()
	fmt.Printf("idle still_open=%d\n", idle.Open())
	idle.Close()
	return nil
}

func runDNSFlood(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dnsflood", flag.ExitOnError)
	addr := fs.String("addr", "", "the DNS server")
	n := fs.Int("n", 45000, "queries")
	rate := fs.Int("rate", 15000, "queries per second")
	domain := fs.String("domain", "example.org", "a domain outside the mesh domain")
	linger := fs.Duration("linger", 5*time.Second, "how long to wait for late answers")
	fs.Parse(args)
	r, err := hostilepeer.DNSFlood(ctx, *addr, *n, *rate, *domain, *linger)
	if err != nil {
		return err
	}
	fmt.Printf("dnsflood %s\n", r)
	return nil
}

func runUpstream(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "UDP and TCP address")
	mode := fs.String("mode", "silent", "silent or tc")
	txt := fs.Int("txt", 60000, "bytes of the TCP answer, with -mode tc")
	dur := fs.Duration("for", 60*time.Second, "how long to run")
	fs.Parse(args)
	m := hostilepeer.UpstreamSilent
	if *mode == "tc" {
		m = hostilepeer.UpstreamTC
	}
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()
	u, err := hostilepeer.NewFakeUpstream(ctx, *listen, m, *txt)
	if err != nil {
		return err
	}
	fmt.Printf("upstream addr=%s mode=%s\n", u.Addr, *mode)
	<-ctx.Done()
	u.Close()
	fmt.Printf("upstream queries=%d\n", u.Queries.Load())
	return nil
}
