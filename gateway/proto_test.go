package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := header{SNI: "http.api.payments.b.strait", Source: "web/front"}
	got, err := parseHeader(h.encode())
	if err != nil || got != h {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := parseHeader(append(h.encode(), 'x')); err == nil {
		t.Fatal("trailing bytes accepted")
	}
	var b bytes.Buffer
	writeStatus(&b, statusDenied, "no")
	var ref *errRefused
	if err := readStatus(bufio.NewReader(&b)); !errors.As(err, &ref) || ref.code != statusDenied {
		t.Fatalf("status: %v", err)
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add(header{SNI: "a.b.c.d", Source: "x/y"}.encode())
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseHeader(data)
		if err != nil {
			return
		}
		if len(h.SNI) > maxHeaderField || len(h.Source) > maxHeaderField {
			t.Fatal("oversized field accepted")
		}
		if !bytes.Equal(h.encode(), data) {
			t.Fatalf("%q parsed as %+v, which encodes differently", data, h)
		}
	})
}
