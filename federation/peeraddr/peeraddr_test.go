package peeraddr_test

import (
	"strings"
	"testing"

	"github.com/straitmesh/strait/federation/peeraddr"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		addr     string
		loopback bool
		ok       bool
	}{
		{"203.0.113.7:8443", false, true},
		{"[2001:db8::1]:8443", false, true},
		{"gw.aws-east.example.com:8443", false, true},
		{"gw.example.com.:443", false, true},
		{"127.0.0.1:8443", true, true},
		{"localhost:8443", true, true},
		{"127.0.0.1:8443", false, false},
		{"[::1]:8443", false, false},
		{"[::ffff:127.0.0.1]:8443", false, false},
		{"localhost:8443", false, false},
		{"api.localhost:8443", false, false},
		{"0.0.0.0:8443", true, false},
		{"[::]:8443", true, false},
		{"169.254.169.254:80", true, false},
		{"[fe80::1%eth0]:8443", true, false},
		{"224.0.0.1:8443", true, false},
		{"127.0.0.1:0", true, false},
		{"127.0.0.1:65536", true, false},
		{"127.0.0.1:+80", true, false},
		{"not-an-address", true, false},
		{"a_b.example:80", true, false},
		{"-a.example:80", true, false},
		{"1.2.3:80", true, false},
		{":8443", true, false},
		{strings.Repeat("a", 63) + "." + strings.Repeat("b", 300) + ":80", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			err := peeraddr.Check(tt.addr, tt.loopback)
			if (err == nil) != tt.ok {
				t.Fatalf("Check(%q, loopback=%v) = %v, want ok=%v", tt.addr, tt.loopback, err, tt.ok)
			}
		})
	}
}

func TestCheckList(t *testing.T) {
	many := make([]string, peeraddr.MaxAddresses+1)
	for i := range many {
		many[i] = "203.0.113.7:8443"
	}
	if err := peeraddr.CheckList(many, false); err == nil || !strings.Contains(err.Error(), "at most 16") {
		t.Fatalf("17 addresses: %v", err)
	}
	if err := peeraddr.CheckList(many[:16], false); err != nil {
		t.Fatal(err)
	}
	if err := peeraddr.CheckList([]string{"203.0.113.7:8443", "127.0.0.1:18701"}, false); err == nil || !strings.HasPrefix(err.Error(), "[1]:") {
		t.Fatalf("error names the index: %v", err)
	}
}

func TestOnLoopback(t *testing.T) {
	for addrs, want := range map[string]bool{
		"127.0.0.1:7400,127.0.0.2:7400": true,
		"127.0.0.1:7400,10.0.0.1:7400":  false,
		"10.0.1.5:7400":                 false,
		"":                              false,
	} {
		var list []string
		if addrs != "" {
			list = strings.Split(addrs, ",")
		}
		if got := peeraddr.OnLoopback(list); got != want {
			t.Errorf("OnLoopback(%v) = %v, want %v", list, got, want)
		}
	}
}

func FuzzCheck(f *testing.F) {
	for _, s := range []string{"203.0.113.7:8443", "[::1]:1", "gw.example:443", "x", ""} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, addr string, loopback bool) {
		if peeraddr.Check(addr, loopback) != nil {
			return
		}
		if len(addr) > peeraddr.MaxLen {
			t.Fatalf("accepted %d bytes", len(addr))
		}
		if !loopback && (strings.HasPrefix(addr, "127.") || strings.HasPrefix(addr, "localhost:")) {
			t.Fatalf("accepted loopback %q", addr)
		}
		if strings.HasPrefix(addr, "0.0.0.0:") || strings.HasSuffix(addr, ":0") {
			t.Fatalf("accepted %q", addr)
		}
	})
}
