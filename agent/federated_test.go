package agent_test

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/trust"
)

var tdB = spiffeid.RequireTrustDomainFromString("b.strait")

func foreignAuthorities(src *workloadapi.X509Source) (int, error) {
	b, err := src.GetX509BundleForTrustDomain(tdB)
	if err != nil {
		return 0, err
	}
	return len(b.X509Authorities()), nil
}

// TestForeignBundles: site A keeps site B's bundle, fetched from B's
// endpoint, per trust domain; follows B's CA rotation; keeps the last
// known bundle while B is unreachable, without disturbing local issuance.
func TestForeignBundles(t *testing.T) {
	a := startSite(t)
	b := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "b", BundleEndpoint: true, Tweak: func(c *controlplane.Config) {
		c.BundleRefreshHint = time.Second
		c.CAPropagationDelay = time.Hour // keep B's new root prepared
	}})
	ctx := controlplanetest.Ctx(t)
	acl, bcl := a.c.Client(0), b.Client(0)
	own, err := bcl.Bundle.GetBundle(ctx, &apipb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + b.Nodes[0].BundleAddr + "/"
	epID := trust.BundleEndpointID(tdB).String()

	// Refusals name the problem.
	for name, req := range map[string]*apipb.SetForeignRequest{
		"own trust domain":              {TrustDomain: "dc1.strait", EndpointUrl: url},
		"http url":                      {TrustDomain: "b.strait", EndpointUrl: "http://127.0.0.1/"},
		"https_spiffe without a bundle": {TrustDomain: "b.strait", EndpointUrl: url, EndpointSpiffeId: epID},
		"endpoint id of another domain": {TrustDomain: "b.strait", EndpointUrl: url, EndpointSpiffeId: "spiffe://c.strait/x", Bundle: own.Bundle},
		"bundle that is not a bundle":   {TrustDomain: "b.strait", EndpointUrl: url, EndpointSpiffeId: epID, Bundle: []byte("{}")},
	} {
		if _, err := acl.Bundle.SetForeign(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}

	if _, err := acl.Bundle.SetForeign(ctx, &apipb.SetForeignRequest{TrustDomain: "b.strait", EndpointUrl: url, EndpointSpiffeId: epID, Bundle: own.Bundle}); err != nil {
		t.Fatalf("federate: %v", err)
	}
	a.register(t, "api", "node1", uidSel(os.Getuid()))
	src := a.source(t, "api")
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		n, err := foreignAuthorities(src)
		if err != nil || n != 1 {
			return fmt.Errorf("workload sees %d roots of b.strait (%v)", n, err)
		}
		list, err := acl.Bundle.ListForeign(ctx, &apipb.ListForeignRequest{})
		if err != nil {
			return err
		}
		if st := list.Bundles[0]; st.LastSuccess == nil || st.LastError != "" || st.RefreshHint.AsDuration() != time.Second {
			return fmt.Errorf("status %v", st)
		}
		return nil
	})
	// Bundles stay per trust domain: A's own bundle is unchanged.
	if own, _ := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("dc1.strait")); len(own.X509Authorities()) != 1 {
		t.Fatal("a foreign root leaked into the local bundle")
	}

	// B prepares a new root: A picks it up from B's endpoint.
	if _, err := bcl.Operator.RotateCA(ctx, &apipb.RotateCARequest{}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if n, _ := foreignAuthorities(src); n != 2 {
			return fmt.Errorf("workload sees %d roots of b.strait, want 2", n)
		}
		return nil
	})

	// B goes away: A records the error, keeps the last known bundle, and
	// keeps issuing locally.
	if err := b.Nodes[0].Stop(); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		list, err := acl.Bundle.ListForeign(ctx, &apipb.ListForeignRequest{})
		if err != nil {
			return err
		}
		if list.Bundles[0].LastError == "" {
			return errors.New("no error recorded for an unreachable endpoint")
		}
		return nil
	})
	if n, _ := foreignAuthorities(src); n != 2 {
		t.Fatalf("last known bundle of b.strait lost: %d roots", n)
	}
	a.register(t, "db", "node1", uidSel(os.Getuid()))
	a.source(t, "db")

	// Removing the relationship removes the bundle from workloads.
	if _, err := acl.Bundle.RemoveForeign(ctx, &apipb.RemoveForeignRequest{TrustDomain: "b.strait"}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if _, err := foreignAuthorities(src); err == nil {
			return errors.New("workload still holds b.strait's bundle")
		}
		return nil
	})
}
