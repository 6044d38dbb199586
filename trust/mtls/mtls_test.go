package mtls_test

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/mtls"
)

var td = spiffeid.RequireTrustDomainFromString("dc1.strait")

// handshake connects client to server over loopback TCP. In TLS 1.3 the
// server checks the client certificate after the client's handshake is
// done, so the client reads once to see the server's verdict.
func handshake(t *testing.T, server, client *mtls.Identity) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		s := tls.Server(c, mtls.ServerConfig(server, mtls.RequireClientSVID, nil))
		err = s.Handshake()
		if err == nil {
			_, err = s.Write([]byte{1})
		}
		srvErr <- err
		s.Close()
	}()
	cl, err := tls.Dial("tcp", ln.Addr().String(), mtls.ClientConfig(client, nil))
	if err != nil {
		<-srvErr
		return err
	}
	defer cl.Close()
	cl.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, rerr := cl.Read(make([]byte, 1))
	if err := <-srvErr; err != nil {
		return err
	}
	return rerr
}

func TestPeerVerification(t *testing.T) {
	now := time.Now()
	root, _ := ca.Generate(td, now, 0)
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{root.Certificate()})
	issue := func(path string, notBefore time.Time, ttl time.Duration) *mtls.Identity {
		key, _ := ca.NewKey()
		leaf, err := root.SignX509SVID(spiffeid.RequireFromPath(td, path), key.Public(), notBefore, ttl)
		if err != nil {
			t.Fatal(err)
		}
		id := mtls.NewIdentity(bundle, nil)
		if err := id.SetSVID([]*x509.Certificate{leaf}, key); err != nil {
			t.Fatal(err)
		}
		return id
	}
	server := issue("/strait/server/s1", now, time.Hour)
	if err := handshake(t, server, issue("/ns/a/svc/b", now, time.Hour)); err != nil {
		t.Fatalf("valid SVIDs: %v", err)
	}
	if err := handshake(t, server, issue("/ns/a/svc/b", now.Add(-3*time.Hour), time.Hour)); err == nil {
		t.Fatal("expired client SVID accepted")
	}
	// A CA certificate presented as a leaf: it has a SPIFFE URI and the
	// site's key, but leaves must not carry the CA flag.
	keyDER, err := root.MarshalKey()
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		t.Fatal(err)
	}
	caAsLeaf := mtls.NewIdentity(bundle, nil)
	if err := caAsLeaf.SetSVID([]*x509.Certificate{root.Certificate()}, k.(crypto.Signer)); err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, server, caAsLeaf); err == nil {
		t.Fatal("a CA certificate was accepted as a client SVID")
	}
	// A client without an SVID is refused by a server that requires one.
	if err := handshake(t, server, mtls.NewIdentity(bundle, nil)); err == nil {
		t.Fatal("client without an SVID accepted")
	}
}
