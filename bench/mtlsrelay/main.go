// Command mtlsrelay is the per-connection mTLS design that Strait's pooled
// tunnel is measured against: two relays, hop for hop like a pair of
// gateways, where every client connection costs a new mTLS connection
// with a full TLS 1.3 handshake (SPIFFE X.509-SVIDs, P-256, on both
// sides; no session resumption) between them.
//
//	mtlsrelay -gen DIR                                  SVIDs for both ends
//	mtlsrelay -egress DIR/egress -listen A -to B        plain in, mTLS out
//	mtlsrelay -ingress DIR/ingress -listen B -to SVC    mTLS in, plain out
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/mtls"
	"github.com/straitmesh/strait/trust/svidfile"
)

var td = spiffeid.RequireTrustDomainFromString("bench.strait")

func main() {
	gen := flag.String("gen", "", "write an egress and an ingress SVID, from a new CA, under this directory")
	egress := flag.String("egress", "", "run the egress relay with the SVID in this directory")
	ingress := flag.String("ingress", "", "run the ingress relay with the SVID in this directory")
	listen := flag.String("listen", "", "address to listen on")
	to := flag.String("to", "", "address to relay each connection to")
	flag.Parse()
	switch {
	case *gen != "":
		if err := generate(*gen); err != nil {
			log.Fatal(err)
		}
	case *egress != "":
		id := identity(*egress)
		cfg := mtls.ClientConfig(id, nil)
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			log.Fatal(err)
		}
		serve(ln, func() (net.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", *to, cfg)
		})
	case *ingress != "":
		id := identity(*ingress)
		ln, err := tls.Listen("tcp", *listen, mtls.ServerConfig(id, mtls.RequireClientSVID, nil))
		if err != nil {
			log.Fatal(err)
		}
		serve(ln, func() (net.Conn, error) { return net.DialTimeout("tcp", *to, 5*time.Second) })
	default:
		flag.Usage()
		os.Exit(2)
	}
}

func generate(dir string) error {
	root, err := ca.Generate(td, time.Now(), 0)
	if err != nil {
		return err
	}
	for _, name := range []string{"egress", "ingress"} {
		key, err := ca.NewKey()
		if err != nil {
			return err
		}
		cert, err := root.SignX509SVID(spiffeid.RequireFromPath(td, "/bench/"+name), key.Public(), time.Now(), 24*time.Hour)
		if err != nil {
			return err
		}
		if err := svidfile.Write(filepath.Join(dir, name), []*x509.Certificate{cert}, key, []*x509.Certificate{root.Certificate()}); err != nil {
			return err
		}
	}
	return nil
}

func identity(dir string) *mtls.Identity {
	chain, key, bundle, err := svidfile.Read(dir)
	if err != nil {
		log.Fatal(err)
	}
	id := mtls.NewIdentity(x509bundle.FromX509Authorities(td, bundle), nil)
	if err := id.SetSVID(chain, key); err != nil {
		log.Fatal(err)
	}
	return id
}

// serve relays every connection accepted on ln to a new one from dial,
// both ways, passing half-closes on.
func serve(ln net.Listener, dial func() (net.Conn, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			up, err := dial()
			if err != nil {
				log.Printf("relay: %v", err)
				return
			}
			defer up.Close()
			done := make(chan struct{})
			go func() {
				io.Copy(up, c)
				closeWrite(up)
				close(done)
			}()
			io.Copy(c, up)
			closeWrite(c)
			<-done
		}()
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
