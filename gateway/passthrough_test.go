package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/trust/ca"
)

// firewall is the network between sites when only gateway ports are open:
// a dialer that connects (for real) to allowed addresses and refuses the
// rest, remembering what was tried.
type firewall struct {
	mu      sync.Mutex
	allowed map[string]bool
	dialed  map[string]int
	refused map[string]int
}

func (f *firewall) allow(addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range addrs {
		f.allowed[a] = true
	}
}

func (f *firewall) Dial(ctx context.Context, addr string) (net.Conn, error) {
	f.mu.Lock()
	ok := f.allowed[addr]
	if ok {
		f.dialed[addr]++
	} else {
		f.refused[addr]++
	}
	f.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("firewall: %s is not a gateway port", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// TestOnlyGatewayPortsBetweenSites: with nothing but the gateways' WAN
// ports reachable between the sites, they federate (the join), replicate
// their exports and carry traffic: servers reach each other through the
// gateways, which pass their mTLS through undecrypted.
func TestOnlyGatewayPortsBetweenSites(t *testing.T) {
	fw := &firewall{allowed: map[string]bool{}, dialed: map[string]int{}, refused: map[string]int{}}
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	closed := func(c *controlplane.Config) { c.PeerDialer = fw.Dial }
	a, b := startSite(t, "site-a", w, closed), startSite(t, "site-b", w, closed)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	fw.allow(a.wanAddr, b.wanAddr)
	// The token carries the issuer's gateways once they are in its catalog.
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		for _, s := range []*site{a, b} {
			if len(s.Nodes[0].Server.Store().GatewayAddresses()) == 0 {
				return fmt.Errorf("no gateway registered yet")
			}
		}
		return nil
	})
	federate(t, a, b)
	port := echoServer(t)
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/api")
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		vip, err := resolve(t, a, "api.payments.site-b.mesh")
		if err != nil {
			return err
		}
		_, err = echo(net.JoinHostPort(vip, strconv.Itoa(port)), "through the gateways only")
		return err
	})
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.dialed[a.wanAddr] == 0 || fw.dialed[b.wanAddr] == 0 {
		t.Fatalf("control traffic did not go through both gateways: %v", fw.dialed)
	}
	for addr, n := range fw.refused {
		t.Logf("refused %d dial(s) to %s (not a gateway port)", n, addr)
	}
}

// workloadSVID issues an X.509-SVID for id from site s's CA (what the
// site's agent would hand the workload).
func workloadSVID(t *testing.T, s *site, id string) *x509svid.SVID {
	t.Helper()
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	cert, err := s.Nodes[0].Server.Authority().SignSVID(controlplanetest.Ctx(t), spiffeid.RequireFromString(id), csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// TestEndToEndIdentityThroughGateways: workloads holding SVIDs speak mTLS
// to each other through the gateways, which carry the bytes without
// decrypting them: the service in B sees the caller's own SVID from A,
// verified against A's bundle, and nothing readable crosses between the
// gateways.
func TestEndToEndIdentityThroughGateways(t *testing.T) {
	a, b := federatedPair(t)
	rec := &recorder{}
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", rec.tap)
	caller, callee := "spiffe://site-a.strait/ns/web/svc/front", "spiffe://site-b.strait/ns/payments/svc/api"
	bundles := x509bundle.NewSet(a.Nodes[0].Server.Bundle(), b.Nodes[0].Server.Bundle())

	// B's service: mTLS, accepting only A's web/front, telling it who it is.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(workloadSVID(t, b, callee), bundles, tlsconfig.AuthorizeID(spiffeid.RequireFromString(caller))))
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
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if tc.Handshake() != nil {
					return
				}
				id, _ := x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
				fmt.Fprintf(c, "SECRET-REPLY-for-%s\n", id)
			}()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/api")
	clientConf := tlsconfig.MTLSClientConfig(workloadSVID(t, a, caller), bundles, tlsconfig.AuthorizeID(spiffeid.RequireFromString(callee)))
	var reply string
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		vip, err := resolve(t, a, "api.payments.site-b.mesh")
		if err != nil {
			return err
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", net.JoinHostPort(vip, strconv.Itoa(port)), clientConf)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		reply, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if reply != "SECRET-REPLY-for-"+caller+"\n" {
		t.Fatalf("B's service saw %q, want the caller's own identity", reply)
	}
	if bytes.Contains(rec.seen(), []byte("SECRET-REPLY")) {
		t.Fatal("plaintext crossed between the gateways")
	}
}
