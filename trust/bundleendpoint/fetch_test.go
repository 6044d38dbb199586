package bundleendpoint_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/bundleendpoint"
	"github.com/straitmesh/strait/trust/ca"
)

var td = spiffeid.RequireTrustDomainFromString("b.strait")

func bundleDoc(t *testing.T, td spiffeid.TrustDomain, certs ...*x509.Certificate) []byte {
	t.Helper()
	b := spiffebundle.FromX509Authorities(td, certs)
	b.SetSequenceNumber(7)
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// webServer serves handler over https_web and returns its URL and roots.
func webServer(t *testing.T, h http.HandlerFunc) (string, *x509.CertPool) {
	t.Helper()
	s := httptest.NewTLSServer(h)
	t.Cleanup(s.Close)
	pool := x509.NewCertPool()
	pool.AddCert(s.Certificate())
	return s.URL, pool
}

func serveJSON(doc []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	}
}

func TestFetchWeb(t *testing.T) {
	root, _ := ca.Generate(td, time.Now(), 0)
	doc := bundleDoc(t, td, root.Certificate())
	other, _ := ca.Generate(spiffeid.RequireTrustDomainFromString("evil.strait"), time.Now(), 0)
	key, _ := ca.NewKey()
	leaf, _ := root.SignX509SVID(spiffeid.RequireFromPath(td, "/x"), key.Public(), time.Now(), time.Hour)

	good, roots := webServer(t, serveJSON(doc))
	ctx := context.Background()
	b, err := bundleendpoint.Fetch(ctx, bundleendpoint.FetchConfig{URL: good, TrustDomain: td, WebRoots: roots})
	if err != nil {
		t.Fatal(err)
	}
	if seq, _ := b.SequenceNumber(); seq != 7 || len(b.X509Authorities()) != 1 {
		t.Fatalf("fetched %v", b)
	}

	tests := []struct {
		name    string
		handler http.HandlerFunc
		url     func(string) string
		want    string
	}{
		{"not found", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, nil, "status 404"},
		{"html", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.Write(doc)
		}, nil, "content type"},
		{"oversized", serveJSON([]byte(`{"keys":[` + strings.Repeat(" ", bundleendpoint.MaxBundleSize) + `]}`)), nil, "larger than"},
		{"malformed", serveJSON([]byte(`{"keys": [{"kty": "EC"`)), nil, "bundle of b.strait"},
		{"no authorities", serveJSON([]byte(`{"keys": []}`)), nil, "no authorities"},
		{"other trust domain's CA", serveJSON(bundleDoc(t, td, other.Certificate())), nil, "belongs to trust domain evil.strait"},
		{"leaf as authority", serveJSON(bundleDoc(t, td, leaf)), nil, "not a CA"},
		{"redirect to http", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://127.0.0.1:1/bundle", http.StatusFound)
		}, nil, "non-https"},
		{"plain http URL", serveJSON(doc), func(u string) string { return strings.Replace(u, "https://", "http://", 1) }, "want an https URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, roots := webServer(t, tt.handler)
			if tt.url != nil {
				u = tt.url(u)
			}
			_, err := bundleendpoint.Fetch(ctx, bundleendpoint.FetchConfig{URL: u, TrustDomain: td, WebRoots: roots})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
		})
	}
	// An endpoint whose certificate the roots do not vouch for is refused.
	if _, err := bundleendpoint.Fetch(ctx, bundleendpoint.FetchConfig{URL: good, TrustDomain: td, WebRoots: x509.NewCertPool()}); err == nil {
		t.Fatal("fetched from an untrusted https_web endpoint")
	}
}

// spiffeEndpoint runs a real endpoint for td presenting an SVID with id.
func spiffeEndpoint(t *testing.T, root *ca.CA, id spiffeid.ID) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	leaf, _ := root.SignX509SVID(id, key.Public(), time.Now(), time.Hour)
	cert := &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key}
	src := spiffebundle.FromX509Authorities(root.TrustDomain(), []*x509.Certificate{root.Certificate()})
	ep, err := bundleendpoint.New(bundleendpoint.Config{Listener: ln, TrustDomain: root.TrustDomain(), Source: src,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ep.Run(ctx)
	t.Cleanup(cancel)
	return "https://" + ln.Addr().String() + "/"
}

func TestFetchSPIFFE(t *testing.T) {
	root, _ := ca.Generate(td, time.Now(), 0)
	trusted := x509bundle.FromX509Authorities(td, []*x509.Certificate{root.Certificate()})
	epID := trust.BundleEndpointID(td)
	u := spiffeEndpoint(t, root, epID)
	ctx := context.Background()
	if _, err := bundleendpoint.Fetch(ctx, bundleendpoint.FetchConfig{URL: u, TrustDomain: td, EndpointID: epID, Trusted: trusted}); err != nil {
		t.Fatal(err)
	}
	// The endpoint of another trust domain, even holding a valid SVID of
	// its own, is refused: its chain does not verify against td's bundle.
	evilTD := spiffeid.RequireTrustDomainFromString("evil.strait")
	evil, _ := ca.Generate(evilTD, time.Now(), 0)
	evilURL := spiffeEndpoint(t, evil, trust.BundleEndpointID(evilTD))
	if _, err := bundleendpoint.Fetch(ctx, bundleendpoint.FetchConfig{URL: evilURL, TrustDomain: td, EndpointID: epID, Trusted: trusted}); err == nil {
		t.Fatal("fetched td's bundle from another trust domain's endpoint")
	}
	// An endpoint of td with another identity is refused.
	wrongID := spiffeEndpoint(t, root, spiffeid.RequireFromPath(td, "/ns/default/svc/web"))
	if _, err := bundleendpoint.Fetch(ctx, bundleendpoint.FetchConfig{URL: wrongID, TrustDomain: td, EndpointID: epID, Trusted: trusted}); err == nil {
		t.Fatal("fetched from an endpoint with the wrong SPIFFE ID")
	}
}

func FuzzParse(f *testing.F) {
	root, _ := ca.Generate(td, time.Now(), 0)
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{root.Certificate()})
	doc, _ := b.Marshal()
	f.Add(doc)
	f.Add([]byte(`{"keys":[]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		b, err := bundleendpoint.Parse(td, doc)
		if err != nil {
			return
		}
		for _, c := range b.X509Authorities() {
			if !c.IsCA {
				t.Fatal("accepted a non-CA authority")
			}
		}
	})
}
