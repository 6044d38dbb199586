package api_test

import (
	"context"
	"crypto/x509"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/federation/token"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust/ca"
)

// FuzzAccept: Federation.Accept on a real one-server site, with any
// request (site, trust domain, bundle, URL, addresses, gateways, name)
// and no, a garbage or a fresh invite's secret. It never fails with
// anything but a refusal code; a peering it creates has a valid name, the
// request's trust domain, 1 to 16 valid addresses, at most 16 valid
// gateways and an https URL; and the invite cannot be redeemed twice.
func FuzzAccept(f *testing.F) {
	c := controlplanetest.Start(f, 1, controlplanetest.Options{Site: "issuer", InMemoryRaft: true, BundleEndpoint: true})
	mgmt := c.Client(0)
	anon := c.ClientWithToken(0, "").Federation
	f.Add("joiner", "joiner.strait", []byte(nil), "https://10.0.0.5:7401/", "10.0.0.5:7400", "10.0.0.6:8443", "", uint8(1))
	f.Add("joiner", "joiner.strait", []byte(nil), "https://10.0.0.5:7401/", "10.0.0.5:7400", "", "issuer", uint8(1))
	f.Add("joiner", "joiner.strait", []byte(nil), "http://x/", "10.0.0.5:7400", "", "", uint8(1))
	f.Add("Bad_Site", "x", []byte("{}"), "https://h/", "example.com:1,10.0.0.1:0", strings.Repeat("1.1.1.1:1,", 17), "", uint8(1))
	f.Add("joiner", "joiner.strait", []byte(nil), "https://h/", "[fe80::1%eth0]:1", "127.0.0.1:99999", "a.b", uint8(2))
	f.Add("issuer", "issuer.strait", []byte(nil), "https://h/", "10.0.0.5:7400", "", "", uint8(0))
	f.Fuzz(func(t *testing.T, site, td string, bundle []byte, bundleURL, addrs, gws, name string, tokenMode uint8) {
		// Each string on its own: two invalid halves can join into a
		// valid sequence.
		if slices.ContainsFunc([]string{site, td, bundleURL, addrs, gws, name}, func(s string) bool { return !utf8.ValidString(s) }) {
			return // a proto string must be UTF-8: the client cannot send it
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req := &apipb.AcceptRequest{Site: site, TrustDomain: td, Bundle: bundle, BundleEndpointUrl: bundleURL,
			Addresses: split(addrs), Gateways: split(gws), RequestedName: name}
		if len(bundle) == 0 { // a valid bundle of the request's trust domain, when it is one
			// (Some names the SPIFFE parser takes, such as ".", no
			// certificate can carry: then the request goes without one.)
			if id, err := spiffeid.TrustDomainFromString(td); err == nil {
				if root, err := ca.Generate(id, time.Now(), 0); err == nil {
					if req.Bundle, err = spiffebundle.FromX509Authorities(id, []*x509.Certificate{root.Certificate()}).Marshal(); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		var secret, invited string
		switch tokenMode % 3 {
		case 1:
			// A fresh name each time: the site is shared by every input,
			// and earlier inputs may have made peers.
			invited = "newpeer" + strconv.FormatInt(invites.Add(1), 10)
			inv, err := mgmt.Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{Peer: invited})
			if err != nil {
				t.Fatal(err)
			}
			d, _, err := token.Decode(inv.Token, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			secret = d.Secret
		case 2:
			secret = "strait_" + url.QueryEscape(name) // a header carries printable ASCII only
		}
		call := func() (*apipb.AcceptResponse, error) {
			cctx := ctx
			if secret != "" {
				cctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
			}
			return anon.Accept(cctx, req)
		}
		resp, err := call()
		if err != nil {
			switch status.Code(err) {
			case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.AlreadyExists, codes.FailedPrecondition:
				return
			}
			t.Fatalf("Accept failed with %v", err)
		}
		list, err := mgmt.Federation.List(ctx, &apipb.ListPeersFedRequest{Name: resp.Name})
		if err != nil || len(list.Peers) != 1 {
			t.Fatalf("accepted peer %q is not listed: %v", resp.Name, err)
		}
		p := list.Peers[0]
		if meshname.ValidLabel(p.Name) != nil || p.TrustDomain != td {
			t.Fatalf("peering named %q for trust domain %q (asked %q)", p.Name, p.TrustDomain, td)
		}
		if u, err := url.Parse(p.BundleEndpointUrl); err != nil || u.Scheme != "https" || u.Host == "" {
			t.Fatalf("peering with bundle endpoint %q", p.BundleEndpointUrl)
		}
		if n := len(p.Addresses); n == 0 || n > 16 {
			t.Fatalf("peering with %d addresses", n)
		}
		for _, a := range append(append([]string{}, p.Addresses...), req.Gateways...) {
			if !validHostPort(a) {
				t.Fatalf("peering with address %q", a)
			}
		}
		if len(req.Gateways) > 16 {
			t.Fatalf("peering with %d gateways", len(req.Gateways))
		}
		if p.Name != invited || p.Name == "issuer" {
			t.Fatalf("peer named %q; its invite was for %q", p.Name, invited)
		}
		if _, err := call(); status.Code(err) != codes.PermissionDenied && status.Code(err) != codes.AlreadyExists {
			t.Fatalf("the invite was redeemed twice: %v", err)
		}
	})
}

// invites numbers the peers FuzzAccept invites.
var invites atomic.Int64

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func validHostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" || ip.IsUnspecified() {
			return false
		}
	} else if name := strings.TrimSuffix(host, "."); len(name) > 253 || !hostName.MatchString(name) ||
		strings.Trim(name[strings.LastIndexByte(name, '.')+1:], "0123456789") == "" {
		return false // neither an IP address nor a DNS name (whose last label is not all digits)
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 1 && n <= 65535
}

// hostName is a DNS host name: labels of letters, digits and inner hyphens.
var hostName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
