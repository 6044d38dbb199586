package token_test

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/federation/token"
	"github.com/straitmesh/strait/trust/ca"
)

var td = spiffeid.RequireTrustDomainFromString("aws-east.strait")

func invite(t testing.TB, root *ca.CA, expires time.Time) *apipb.FederationInvite {
	t.Helper()
	doc, err := spiffebundle.FromX509Authorities(td, []*x509.Certificate{root.Certificate()}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return &apipb.FederationInvite{
		Version: 1, Site: "aws-east", TrustDomain: td.Name(), Bundle: doc,
		BundleEndpointUrl: "https://10.0.0.1:8443/", Addresses: []string{"10.0.0.1:7400"},
		Secret: "strait_secret", Expires: timestamppb.New(expires),
	}
}

func TestRoundTripAndRefusals(t *testing.T) {
	now := time.Now()
	root, _ := ca.Generate(td, now, 0)
	other, _ := ca.Generate(td, now, 0) // same name, another key
	good, err := token.Encode(invite(t, root, now.Add(15*time.Minute)), root.Signer())
	if err != nil {
		t.Fatal(err)
	}
	inv, b, err := token.Decode(good, now)
	if err != nil {
		t.Fatal(err)
	}
	if inv.Site != "aws-east" || inv.Secret != "strait_secret" || b.TrustDomain() != td {
		t.Fatalf("decoded %v", inv)
	}

	forged, _ := token.Encode(invite(t, root, now.Add(time.Hour)), other.Signer())
	expired, _ := token.Encode(invite(t, root, now.Add(-time.Minute)), root.Signer())
	// Tamper: change the addresses inside a validly signed token.
	wire, _ := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(good, token.Prefix))
	var signed apipb.SignedInvite
	proto.Unmarshal(wire, &signed)
	var inv2 apipb.FederationInvite
	proto.Unmarshal(signed.Invite, &inv2)
	inv2.Addresses = []string{"203.0.113.9:7400"}
	signed.Invite, _ = proto.Marshal(&inv2)
	w2, _ := proto.Marshal(&signed)
	tampered := token.Prefix + base64.RawURLEncoding.EncodeToString(w2)

	tests := []struct {
		name, tok string
		want      error
	}{
		{"signed by another key", forged, token.ErrSignature},
		{"tampered", tampered, token.ErrSignature},
		{"expired", expired, token.ErrExpired},
		{"truncated", good[:len(good)/2], token.ErrMalformed},
		{"no prefix", strings.TrimPrefix(good, token.Prefix), token.ErrMalformed},
		{"garbage", token.Prefix + "!!!", token.ErrMalformed},
		{"empty", "", token.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := token.Decode(tt.tok, now); !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	now := time.Now()
	root, _ := ca.Generate(td, now, 0)
	good, _ := token.Encode(invite(f, root, now.Add(time.Hour)), root.Signer())
	f.Add(good)
	f.Add(token.Prefix)
	f.Fuzz(func(t *testing.T, s string) {
		inv, b, err := token.Decode(s, now)
		if err == nil && (inv == nil || b == nil || inv.Secret == "") {
			t.Fatal("accepted an incomplete token")
		}
	})
}
