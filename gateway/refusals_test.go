package gateway_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/internal/tunnelmux"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/mtls"
	"github.com/straitmesh/strait/trust/svidfile"
)

// tunnelFrom opens a raw tunnel to gw as the holder of the identity in
// dir (a gateway data dir), to send what a real gateway never would.
func tunnelFrom(t *testing.T, dir string, to *site) (*tunnelmux.Session, error) {
	t.Helper()
	addr := to.wanAddr
	peerCAs, err := svidfile.ReadCerts(controlplane.CAFile(to.Nodes[0].Dir))
	if err != nil {
		t.Fatal(err)
	}
	chain, key, bundle, err := svidfile.Read(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := x509svid.IDFromCert(chain[0])
	ident := mtls.NewIdentity(x509bundle.FromX509Authorities(id.TrustDomain(), bundle), nil)
	if err := ident.SetSVID(chain, key); err != nil {
		t.Fatal(err)
	}
	ident.SetFederated(x509bundle.NewSet(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(peerCAs[0].URIs[0].Host), peerCAs)))
	conn, err := tls.Dial("tcp", addr, mtls.ClientConfig(ident, func(spiffeid.ID) error { return nil }, meshname.TunnelALPN))
	if err != nil {
		return nil, err
	}
	return tunnelmux.Client(conn, tunnelmux.Config{}), nil
}

// TestGatewayRefusesWhatItShould: garbage, half-open connections, a
// certificate from a trust domain that is not a peer, an SNI nobody
// exports and a claimed source (even one an intention allows: a claim
// proves nothing) are all refused, and leave no goroutine behind.
func TestGatewayRefusesWhatItShould(t *testing.T) {
	a, b := federatedPair(t)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	port := echoServer(t)
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a/web/*", "payments/api")
	sni := "main.api.payments.site-b.strait"
	// Wait until B's gateway serves the export.
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		sess, err := tunnelFrom(t, a.gwDir, b)
		if err != nil {
			return err
		}
		defer sess.Close()
		st, err := sess.Open(testHeader(sni, "web/front"), nil)
		if err != nil {
			return err
		}
		defer st.Close()
		// Refused all the same once served: the allow names a source
		// service, which the peer gateway's claim in the header cannot
		// prove (fail-closed).
		if err := readTestStatus(st); err == nil || !strings.Contains(err.Error(), "no intention allows") {
			return fmt.Errorf("not served yet: %v", err)
		}
		return nil
	})
	// And until a connection through A's egress has been answered by B
	// (refused: no intention allows an unnamed source), so that the
	// goroutines of A's egress listener and of its pooled tunnel are
	// counted before, not after.
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		vip, err := resolve(t, a, "api.payments.site-b.mesh")
		if err != nil {
			return err
		}
		c, err := net.Dial("tcp", net.JoinHostPort(vip, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("x"))
		_, err = io.ReadAll(c)
		return err
	})
	before := gatewayGoroutines()

	// Garbage and half-open connections are dropped.
	for _, payload := range [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), bytes.Repeat([]byte{0x16, 0x03, 0x01, 0xff}, 100), nil} {
		c, err := net.Dial("tcp", b.wanAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(payload)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil && os.IsTimeout(err) {
			t.Fatalf("connection with %d bytes of garbage still open after 5s", len(payload))
		}
		c.Close()
	}
	// A gateway of a trust domain that is not a peer cannot handshake.
	evil, err := ca.Generate(spiffeid.RequireTrustDomainFromString("evil.strait"), time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	cert, err := evil.SignCSR(spiffeid.RequireFromString("spiffe://evil.strait/strait/gateway/x"), csr, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ident := mtls.NewIdentity(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("evil.strait"), []*x509.Certificate{evil.Certificate()}), nil)
	ident.SetSVID([]*x509.Certificate{cert}, key)
	if c, err := tls.Dial("tcp", b.wanAddr, mtls.ClientConfig(ident, func(spiffeid.ID) error { return nil }, meshname.TunnelALPN)); err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("an unfederated trust domain's gateway got through")
		}
		c.Close()
	}
	// A peer's gateway asking for what is not exported, or as a source
	// no intention allows, is refused; a half-open stream times out.
	sess, err := tunnelFrom(t, a.gwDir, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ sni, source, want string }{
		{"main.ledger.payments.site-b.strait", "web/front", "not exported"},
		{"main.api.payments.other.strait", "web/front", "not exported"},
		{sni, "batch/job", "no intention allows"},
		{sni, "", "no intention allows"},
		// The very source the intention allows, claimed by the peer's
		// gateway: a claim is not an identity, so it grants nothing.
		{sni, "web/front", "no intention allows"},
	} {
		st, err := sess.Open(testHeader(tc.sni, tc.source), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := readTestStatus(st); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s as %q: %v, want %q", tc.sni, tc.source, err, tc.want)
		}
		st.Close()
	}
	st, _ := sess.Open(nil, nil)
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := readTestStatus(st); err == nil || os.IsTimeout(err) {
		t.Fatalf("a stream without a header: %v, want it refused before our 5s deadline", err)
	}
	st.Close()
	sess.Close()
	// Nothing is left running in the gateways for any of it. (Only the
	// gateways' goroutines are counted: the servers in this process come
	// and go with their own work.)
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if n, stacks := gatewayGoroutineStacks(); n > before {
			return fmt.Errorf("%d gateway goroutines, %d before the abuse:\n%s", n, before, stacks)
		}
		return nil
	})
}

// testHeader is a stream header, written independently of the gateway's
// own encoder.
func testHeader(sni, source string) []byte {
	b := []byte{1}
	b = binary.AppendUvarint(b, uint64(len(sni)))
	b = append(b, sni...)
	b = binary.AppendUvarint(b, uint64(len(source)))
	return append(b, source...)
}

func readTestStatus(r io.Reader) error {
	br := bufio.NewReader(r)
	code, err := br.ReadByte()
	if err != nil {
		return err
	}
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return err
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(br, msg); err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("refused (%d): %s", code, msg)
	}
	return nil
}
