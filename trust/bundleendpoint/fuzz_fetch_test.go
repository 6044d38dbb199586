package bundleendpoint_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"mime"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/straitmesh/strait/trust/bundleendpoint"
	"github.com/straitmesh/strait/trust/ca"
)

// fetchCase is what the fuzzed bundle endpoint answers.
type fetchCase struct {
	status      int
	contentType string
	body        []byte
	location    string // a redirect at the end of the hops, when set
	hops        int    // redirects on the same server before the answer
}

// FuzzFetch: a bundle endpoint answering with any status, content type,
// body, size and redirects (same-server hops, then any Location) never
// makes Fetch panic or hang, and a fetch that succeeds got a 200 with a
// JSON type, after at most two redirects, of at most MaxBundleSize bytes,
// and returned a bundle of the asked trust domain with authorities.
func FuzzFetch(f *testing.F) {
	root, err := ca.Generate(td, time.Now(), 0)
	if err != nil {
		f.Fatal(err)
	}
	sb := spiffebundle.FromX509Authorities(td, []*x509.Certificate{root.Certificate()})
	doc, err := sb.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	var cur atomic.Pointer[fetchCase]
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := cur.Load()
		if k, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/hop/")); err == nil && k < c.hops {
			http.Redirect(w, r, "/hop/"+strconv.Itoa(k+1), http.StatusFound)
			return
		}
		if c.location != "" {
			w.Header().Set("Location", c.location)
		}
		if c.contentType != "" {
			w.Header().Set("Content-Type", c.contentType)
		}
		w.WriteHeader(c.status)
		w.Write(c.body)
	}))
	f.Cleanup(srv.Close)
	url, roots := srv.URL, x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	f.Add(200, "application/json", doc, uint16(0), "", uint8(0))
	f.Add(200, "application/jwk-set+json; charset=utf-8", doc, uint16(0), "", uint8(2))
	f.Add(200, "application/json", doc, uint16(0), "", uint8(3))
	f.Add(302, "", []byte{}, uint16(0), "http://127.0.0.1:1/plain", uint8(0))
	f.Add(301, "", []byte{}, uint16(0), "/hop/0", uint8(1))
	f.Add(200, "text/html", doc, uint16(0), "", uint8(0))
	f.Add(200, "application/json", []byte(`{"keys":[]}`), uint16(40000), "", uint8(0))
	f.Add(500, "application/json", doc, uint16(0), "", uint8(0))
	f.Add(200, "application/json", []byte("{"), uint16(0), "", uint8(0))
	f.Fuzz(func(t *testing.T, status int, contentType string, body []byte, repeat uint16, location string, hops uint8) {
		c := &fetchCase{status: 200 + int(uint(status)%400), contentType: contentType, location: location, hops: int(hops % 5)}
		if strings.ContainsAny(contentType+location, "\r\n\x00") {
			return // not expressible as a header
		}
		// Sizes around the limit without storing megabytes in the corpus.
		n := 1 + int(repeat)
		if len(body)*n > 2*bundleendpoint.MaxBundleSize {
			n = 1 + 2*bundleendpoint.MaxBundleSize/max(len(body), 1)
		}
		c.body = bytes.Repeat(body, n)
		cur.Store(c)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		b, err := bundleendpoint.Fetch(ctx, bundleendpoint.FetchConfig{URL: url + "/hop/0", TrustDomain: td, WebRoots: roots, Timeout: 3 * time.Second})
		if time.Since(start) > 4*time.Second {
			t.Fatalf("fetch took %s, past its timeout", time.Since(start))
		}
		if err != nil {
			return
		}
		mt, _, _ := mime.ParseMediaType(c.contentType)
		switch {
		case c.status != http.StatusOK && c.location == "":
			t.Fatalf("accepted status %d", c.status)
		case mt != "application/json" && mt != "application/jwk-set+json" && c.location == "":
			t.Fatalf("accepted content type %q", c.contentType)
		case c.hops > 2:
			t.Fatalf("followed %d redirects", c.hops)
		case len(c.body) > bundleendpoint.MaxBundleSize && c.location == "":
			t.Fatalf("accepted a body of %d bytes", len(c.body))
		case b.TrustDomain() != td || len(b.X509Authorities())+len(b.JWTAuthorities()) == 0:
			t.Fatalf("returned a bundle of %s with no authorities", b.TrustDomain())
		}
	})
}
