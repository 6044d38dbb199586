package controlplane_test

import (
	"fmt"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

func lookupA(t *testing.T, addr, name string) (*mdns.Msg, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	r, _, err := (&mdns.Client{Timeout: 2 * time.Second}).Exchange(m, addr)
	return r, err
}

// TestDNSFollowsTheCatalog: every server answers mesh names from its own
// replica, and follows registrations, health and deregistrations.
func TestDNSFollowsTheCatalog(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{Site: "aws-east", DNS: true})
	cl := c.Client(c.Leader())
	ctx := controlplanetest.Ctx(t)
	_, err := cl.Catalog.Register(ctx, &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "payments", Name: "api"},
		Instance: &apipb.Instance{Id: "api-1", Address: "10.0.0.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	expect := func(n int, rcode int) {
		t.Helper()
		for _, node := range c.Nodes {
			controlplanetest.WaitFor(t, 10*time.Second, func() error {
				r, err := lookupA(t, node.DNSAddr, "api.payments.aws-east.mesh")
				if err != nil {
					return err
				}
				if r.Rcode != rcode || len(r.Answer) != n {
					return fmt.Errorf("%s: %s with %d answers, want %s with %d", node.ID, mdns.RcodeToString[r.Rcode], len(r.Answer), mdns.RcodeToString[rcode], n)
				}
				return nil
			})
		}
	}
	expect(1, mdns.RcodeSuccess)
	_, err = cl.Catalog.Register(ctx, &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "payments", Name: "api"},
		Instance: &apipb.Instance{Id: "api-1", Address: "10.0.0.1", Health: apipb.Health_HEALTH_CRITICAL},
	})
	if err != nil {
		t.Fatal(err)
	}
	expect(0, mdns.RcodeSuccess) // NODATA: the service exists, nothing passing
	if _, err := cl.Catalog.Deregister(ctx, &apipb.DeregisterRequest{Namespace: "payments", Service: "api"}); err != nil {
		t.Fatal(err)
	}
	expect(0, mdns.RcodeNameError)
}
