package demo_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/straitmesh/strait/demo"
)

// TestDemo runs what `strait demo` runs and checks what it tells users to
// try: names resolve to virtual IPs, and HTTP crosses between the sites
// both ways; stopping removes everything.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d, err := demo.Start(ctx, demo.Options{Sites: 2})
	if err != nil {
		t.Fatal(err)
	}
	a, b := d.Sites[0], d.Sites[1]
	for _, pair := range [][2]*demo.Site{{a, b}, {b, a}} {
		in, of := pair[0], pair[1]
		vip, err := d.VirtualIP(ctx, in, of)
		if err != nil {
			t.Fatal(err)
		}
		m := new(mdns.Msg)
		m.SetQuestion(of.Service+"."+demo.Namespace+"."+of.Name+".mesh.", mdns.TypeA)
		r, _, err := (&mdns.Client{Timeout: 2 * time.Second}).Exchange(m, in.DNSAddr)
		if err != nil || len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != vip {
			t.Fatalf("%s's DNS for %s's service: %v %v, want %s", in.Name, of.Name, r, err, vip)
		}
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + net.JoinHostPort(vip, strconv.Itoa(of.ServicePort)) + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), "in site "+of.Name) {
			t.Fatalf("%s -> %s: %q", in.Name, of.Name, body)
		}
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.Dir); !os.IsNotExist(err) {
		t.Fatalf("%s left behind: %v", d.Dir, err)
	}
}
