package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	var b bytes.Buffer
	h := header{SNI: "http.api.payments.b.strait", Source: "web/front"}
	if err := writeHeader(&b, h); err != nil {
		t.Fatal(err)
	}
	got, err := readHeader(bufio.NewReader(&b))
	if err != nil || got != h {
		t.Fatalf("%v %v", got, err)
	}
	b.Reset()
	writeStatus(&b, statusDenied, "no")
	var ref *errRefused
	if err := readStatus(bufio.NewReader(&b)); !errors.As(err, &ref) || ref.code != statusDenied {
		t.Fatalf("status: %v", err)
	}
}

func FuzzReadHeader(f *testing.F) {
	var b bytes.Buffer
	writeHeader(&b, header{SNI: "a.b.c.d", Source: "x/y"})
	f.Add(b.Bytes())
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHeader(bufio.NewReader(bytes.NewReader(data)))
		if err == nil && (len(h.SNI) > maxHeaderField || len(h.Source) > maxHeaderField) {
			t.Fatal("oversized field accepted")
		}
	})
}
