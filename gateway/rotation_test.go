package gateway_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/trust/svidfile"
)

// TestCARotationUnderLoad: each site rotates its CA in turn while traffic
// flows between them; gateways renew onto the new roots, peers learn the
// new bundles, the old roots are dropped, and no connection fails.
func TestCARotationUnderLoad(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	fast := func(c *controlplane.Config) { c.CAPropagationDelay, c.MaxLeafTTL = time.Second, 3*time.Second }
	a, b := startSite(t, "site-a", w, fast), startSite(t, "site-b", w, fast)
	federate(t, a, b)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	ctx := controlplanetest.Ctx(t)
	port := echoServer(t)
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/api")
	var addr string
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		vip, err := resolve(t, a, "api.payments.site-b.mesh")
		if err != nil {
			return err
		}
		addr = net.JoinHostPort(vip, strconv.Itoa(port))
		_, err = echo(addr, "warm-up")
		return err
	})
	stop := load(addr, 4)
	for _, s := range []*site{b, a} {
		cl := s.Client(0)
		before, err := cl.Operator.CAStatus(ctx, &apipb.CAStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Operator.RotateCA(ctx, &apipb.RotateCARequest{}); err != nil {
			t.Fatal(err)
		}
		// Done when only the new root is left and the gateway's SVID
		// comes from it.
		controlplanetest.WaitFor(t, 30*time.Second, func() error {
			st, err := cl.Operator.CAStatus(ctx, &apipb.CAStatusRequest{})
			if err != nil {
				return err
			}
			if len(st.Roots) != 1 || st.Roots[0].SubjectKeyId == before.Roots[0].SubjectKeyId {
				return fmt.Errorf("%d roots", len(st.Roots))
			}
			svid, err := os.ReadFile(filepath.Join(s.gwDir, "tls", "svid.pem"))
			if err != nil {
				return err
			}
			chain, err := svidfile.ParseCerts(svid)
			if err != nil {
				return err
			}
			if fmt.Sprintf("%x", chain[0].AuthorityKeyId) != st.Roots[0].SubjectKeyId {
				return fmt.Errorf("gateway svid not from the new root yet")
			}
			return nil
		})
		// And new tunnels work on the new roots: a fresh connection.
		if _, err := echo(addr, "after-rotation"); err != nil {
			t.Fatalf("after rotating %s: %v", s.Nodes[0].Server.Store().Site().Site, err)
		}
	}
	ok, failed := stop()
	if len(failed) > 0 {
		t.Fatalf("%d of %d connections failed during the rotations; first: %v", len(failed), ok+len(failed), failed[0])
	}
	t.Logf("%d connections across both rotations, none failed", ok)
}

// TestGatewayRenewsOnceAcrossARotation: while a CA rotation's new root is
// prepared (trusted, not signing yet), the gateway keeps its SVID from
// the active root rather than asking for another on every renewal check
// (which could only bring one more from the same root); once the new
// root is activated it renews onto it, once. The site's count of SVIDs
// signed shows both.
func TestGatewayRenewsOnceAcrossARotation(t *testing.T) {
	const propagation = 2 * time.Minute
	clock := &controlplanetest.Clock{}
	reg := prometheus.NewRegistry()
	s := &site{Cluster: controlplanetest.Start(t, 1, controlplanetest.Options{Site: "site-a", InMemoryRaft: true,
		Registry: reg, Clock: clock, Tweak: func(c *controlplane.Config) { c.CAPropagationDelay = propagation }})}
	s.startGateway(t, "gw-a", nil, func(c *gateway.Config) { c.Now = clock.Now })
	ctx := controlplanetest.Ctx(t)
	signed := func() float64 { return testutil.ToFloat64(&sumOf{reg, "strait_ca_svids_signed_total"}) }
	// quiet waits for ten more heartbeats of the gateway: at least twenty
	// of its renewal checks (RenewCheck is half the heartbeat interval).
	quiet := func() {
		t.Helper()
		from := heartbeats(t, s, "ok")
		controlplanetest.WaitFor(t, 30*time.Second, func() error {
			if n := heartbeats(t, s, "ok") - from; n < 10 {
				return fmt.Errorf("%v heartbeats so far", n)
			}
			return nil
		})
	}
	issuer := func() string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(s.gwDir, "tls", "svid.pem"))
		if err != nil {
			t.Fatal(err)
		}
		chain, err := svidfile.ParseCerts(b)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%x", chain[0].AuthorityKeyId)
	}
	oldRoot := issuer()

	// 1. A new root is prepared: the gateway trusts it, and renews nothing.
	if _, err := s.Client(0).Operator.RotateCA(ctx, &apipb.RotateCARequest{}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 15*time.Second, func() error {
		if n := s.gw.OwnRoots(); n != 2 {
			return fmt.Errorf("gateway trusts %d roots of its site, want 2", n)
		}
		return nil
	})
	before := signed()
	quiet()
	if n := signed() - before; n != 0 {
		t.Fatalf("%v SVIDs signed while the new root was only prepared, want 0 (the gateway re-signs on every check)", n)
	}
	if got := issuer(); got != oldRoot {
		t.Fatalf("gateway SVID re-issued by %s while the new root was only prepared", got)
	}

	// 2. The new root is activated: the gateway renews onto it, then stops.
	clock.Advance(propagation + time.Second)
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		if issuer() == oldRoot {
			return fmt.Errorf("gateway svid not from the new root yet")
		}
		return nil
	})
	renewed := signed()
	if renewed-before < 1 {
		t.Fatalf("%v SVIDs signed for the activation, want at least 1", renewed-before)
	}
	quiet()
	if n := signed() - renewed; n != 0 {
		t.Fatalf("%v more SVIDs signed after the gateway renewed onto the active root, want 0", n)
	}
}
