package controlplane_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/internal/wan"
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

// TestDNSImportedNamesAndFailover: a service registered in site B and
// exported to A resolves in A to the virtual IP A allocated for it, and
// the failover name moves to B when A's own instances fail, and back.
func TestDNSImportedNamesAndFailover(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	site := func(name string) *controlplanetest.Cluster {
		return controlplanetest.Start(t, 1, controlplanetest.Options{Site: name, BundleEndpoint: true, DNS: true,
			Tweak: func(c *controlplane.Config) {
				c.PeerDialer = w.Dial
				c.PeerHeartbeat, c.PeerStaleAfter = testPeerHeartbeat, testStaleAfter
				c.VirtualIPCIDR = "127.240.0.0/16"
			}})
	}
	a, b := site("aws-east"), site("gcp-west")
	federate(t, a, b, "gcp-west")
	ctx := controlplanetest.Ctx(t)
	acl, bcl := a.Client(0), b.Client(0)
	registerAt(t, bcl, "payments", "api", "api-1", "10.1.0.1", apipb.Health_HEALTH_PASSING)
	if _, err := bcl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "payments", Service: "api", To: []string{"aws-east"}}}); err != nil {
		t.Fatal(err)
	}
	registerAt(t, acl, "payments", "api", "local-1", "10.0.0.1", apipb.Health_HEALTH_PASSING)
	dnsA := a.Nodes[0].DNSAddr
	answers := func(name, want string) {
		t.Helper()
		controlplanetest.WaitFor(t, 10*time.Second, func() error {
			r, err := lookupA(t, dnsA, name)
			if err != nil {
				return err
			}
			if len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != want {
				return fmt.Errorf("%s answers %v, want %s", name, r.Answer, want)
			}
			return nil
		})
	}
	var vip string
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		svc, _, _, ok := a.Nodes[0].Server.Store().Service(state.ServiceKey{Peer: "gcp-west", Namespace: "payments", Name: "api"}, false)
		if !ok || svc.VirtualIp == "" {
			return fmt.Errorf("no virtual IP for the import yet")
		}
		vip = svc.VirtualIp
		return nil
	})
	if !netip.MustParsePrefix("127.240.0.0/16").Contains(netip.MustParseAddr(vip)) {
		t.Fatalf("virtual IP %s outside the configured range", vip)
	}
	answers("api.payments.gcp-west.mesh", vip)
	answers("api.payments.mesh", "10.0.0.1")
	registerAt(t, acl, "payments", "api", "local-1", "10.0.0.1", apipb.Health_HEALTH_CRITICAL)
	answers("api.payments.mesh", vip)
	registerAt(t, acl, "payments", "api", "local-1", "10.0.0.1", apipb.Health_HEALTH_PASSING)
	answers("api.payments.mesh", "10.0.0.1")
}
