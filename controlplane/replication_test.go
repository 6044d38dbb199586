package controlplane_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/internal/wan"
)

// Sites in these tests reach each other only through an emulated WAN (a
// real TCP proxy on loopback), which the tests cut to partition them.

const (
	testPeerHeartbeat = 100 * time.Millisecond
	testStaleAfter    = time.Second
)

func wanSite(t *testing.T, name string, servers int, w *wan.WAN) *controlplanetest.Cluster {
	return controlplanetest.Start(t, servers, controlplanetest.Options{Site: name, BundleEndpoint: true,
		Tweak: func(c *controlplane.Config) {
			c.PeerDialer = w.Dial
			c.PeerHeartbeat, c.PeerStaleAfter = testPeerHeartbeat, testStaleAfter
		}})
}

// federate makes a issue a token for b and b join it; a names b bName, b
// names a by its site name.
func federate(t testing.TB, a, b *controlplanetest.Cluster, bName string) {
	t.Helper()
	ctx := controlplanetest.Ctx(t)
	inv, err := a.Client(0).Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{Peer: bName})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client(0).Federation.Join(ctx, &apipb.JoinFederationRequest{Token: inv.Token}); err != nil {
		t.Fatalf("join: %v", err)
	}
}

// anyClient returns a client of a running server of c.
func anyClient(t *testing.T, c *controlplanetest.Cluster) *apiclient.Client {
	t.Helper()
	for i, n := range c.Nodes {
		if n.Running() {
			return c.Client(i)
		}
	}
	t.Fatal("no running server")
	return nil
}

func registerAt(t testing.TB, cl *apiclient.Client, ns, svc, id, addr string, health apipb.Health) {
	t.Helper()
	_, err := cl.Catalog.Register(controlplanetest.Ctx(t), &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: ns, Name: svc, Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
		Instance: &apipb.Instance{Id: id, Address: addr, Ports: map[string]uint32{"http": 8080}, Health: health},
	})
	if err != nil {
		t.Fatalf("register %s/%s/%s: %v", ns, svc, id, err)
	}
}

// imported returns the instance IDs of a service imported from peer, as
// every running server of c sees it; an error until they all agree.
func imported(c *controlplanetest.Cluster, peer, ns, svc string) ([]string, error) {
	var first []string
	for i, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		_, insts, _, ok := n.Server.Store().Service(state.ServiceKey{Peer: peer, Namespace: ns, Name: svc}, false)
		var ids []string
		if ok {
			ids = []string{}
			for _, in := range insts {
				if in.Peer != peer {
					return nil, fmt.Errorf("%s: instance %s has peer %q", n.ID, in.Id, in.Peer)
				}
				ids = append(ids, in.Id)
			}
		}
		if i > 0 && first != nil && !slices.Equal(first, ids) {
			return nil, fmt.Errorf("servers disagree: %v vs %v", first, ids)
		}
		if first == nil {
			first = ids
		}
	}
	return first, nil
}

// waitImported waits until every server of c imports exactly want (nil:
// the service is absent).
func waitImported(t *testing.T, c *controlplanetest.Cluster, peer, ns, svc string, want []string) {
	t.Helper()
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		got, err := imported(c, peer, ns, svc)
		if err != nil {
			return err
		}
		if (got == nil) != (want == nil) || !slices.Equal(got, want) {
			return fmt.Errorf("%s imports %s/%s from %s as %v, want %v", c.Nodes[0].Server.Store().Site().GetSite(), ns, svc, peer, got, want)
		}
		return nil
	})
}

func peerStatus(t *testing.T, cl *apiclient.Client, name string) *apipb.Peer {
	t.Helper()
	r, err := cl.Federation.List(controlplanetest.Ctx(t), &apipb.ListPeersFedRequest{Name: name})
	if err != nil {
		t.Fatalf("federation show %s: %v", name, err)
	}
	return r.Peers[0]
}

func TestReplicationBetweenSites(t *testing.T) {
	w := wan.New(2 * time.Millisecond)
	t.Cleanup(func() { w.Close() })
	a, b := wanSite(t, "site-a", 3, w), wanSite(t, "site-b", 3, w)
	federate(t, a, b, "site-b")
	ctx := controlplanetest.Ctx(t)
	bcl := b.Client(0)

	// B has an exported service (one passing, one critical instance) and
	// one it keeps to itself.
	registerAt(t, bcl, "payments", "api", "api-1", "10.1.0.1", apipb.Health_HEALTH_PASSING)
	registerAt(t, bcl, "payments", "api", "api-2", "10.1.0.2", apipb.Health_HEALTH_CRITICAL)
	registerAt(t, bcl, "payments", "ledger", "ledger-1", "10.1.0.9", apipb.Health_HEALTH_PASSING)
	if _, err := bcl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "payments", Service: "api", To: []string{"site-a"}}}); err != nil {
		t.Fatal(err)
	}
	// Only the exported service, with only its passing instance, lands in
	// A's catalog, marked with its peer.
	waitImported(t, a, "site-b", "payments", "api", []string{"api-1"})
	waitImported(t, a, "site-b", "payments", "ledger", nil)

	// Imports are watchable like local services.
	acl := a.Client(0)
	wctx, cancel := context.WithCancel(ctx)
	watch, err := acl.Catalog.Watch(wctx, &apipb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	sawPeer := make(chan string, 1)
	go func() {
		for {
			ev, err := watch.Recv()
			if err != nil {
				return
			}
			for _, c := range ev.Changes {
				if in := c.GetInstance(); in != nil && in.Peer == "site-b" && in.Id == "api-3" {
					sawPeer <- in.Id
					return
				}
			}
		}
	}()

	// Changes follow: a new instance, an instance turning healthy and
	// another turning critical, a deregistration.
	registerAt(t, bcl, "payments", "api", "api-3", "10.1.0.3", apipb.Health_HEALTH_PASSING)
	registerAt(t, bcl, "payments", "api", "api-2", "10.1.0.2", apipb.Health_HEALTH_PASSING)
	waitImported(t, a, "site-b", "payments", "api", []string{"api-1", "api-2", "api-3"})
	select {
	case <-sawPeer:
	case <-time.After(10 * time.Second):
		t.Fatal("A's catalog watch did not show the imported instance")
	}
	cancel()
	registerAt(t, bcl, "payments", "api", "api-1", "10.1.0.1", apipb.Health_HEALTH_CRITICAL)
	if _, err := bcl.Catalog.Deregister(ctx, &apipb.DeregisterRequest{Namespace: "payments", Service: "api", InstanceId: "api-3"}); err != nil {
		t.Fatal(err)
	}
	waitImported(t, a, "site-b", "payments", "api", []string{"api-2"})

	// Both ways: A exports to B on the same peering.
	registerAt(t, acl, "web", "front", "front-1", "10.2.0.1", apipb.Health_HEALTH_PASSING)
	if _, err := acl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "web", Service: "front", To: []string{"*"}}}); err != nil {
		t.Fatal(err)
	}
	waitImported(t, b, "site-a", "web", "front", []string{"front-1"})

	// An imported service cannot be written locally.
	if _, err := acl.Catalog.Register(ctx, &apipb.RegisterRequest{Service: &apipb.Service{Namespace: "payments", Name: "api", Peer: "site-b"}}); err == nil || !strings.Contains(err.Error(), "replication") {
		t.Fatalf("register into an import: %v", err)
	}

	// Status on both sides: active, counts, versions acknowledged.
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		p := peerStatus(t, acl, "site-b")
		if p.Imports.State != apipb.PeerState_PEER_STATE_ACTIVE || !p.Imports.Connected || p.Imports.Services != 1 || p.Imports.Instances != 1 {
			return fmt.Errorf("A's import status %v", p.Imports)
		}
		if p.Exports.Services != 1 || !p.Exports.Connected || p.Exports.AckedVersion == 0 || p.Exports.AckedVersion != p.Exports.SentVersion {
			return fmt.Errorf("A's export status %v", p.Exports)
		}
		return nil
	})

	// Leader changes on either side move the streams; nothing is lost.
	for _, site := range []*controlplanetest.Cluster{b, a} {
		l := site.Leader()
		if err := site.Nodes[l].Stop(); err != nil {
			t.Fatal(err)
		}
		bcl = anyClient(t, b)
		id := fmt.Sprintf("api-after-%s", site.Nodes[0].Server.Store().Site().GetSite())
		controlplanetest.WaitFor(t, 20*time.Second, func() error {
			_, err := bcl.Catalog.Register(ctx, &apipb.RegisterRequest{
				Service:  &apipb.Service{Namespace: "payments", Name: "api", Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
				Instance: &apipb.Instance{Id: id, Address: "10.1.0.7", Ports: map[string]uint32{"http": 8080}},
			})
			return err
		})
		got, _ := imported(a, "site-b", "payments", "api")
		want := append(slices.Clone(got), id)
		slices.Sort(want)
		waitImported(t, a, "site-b", "payments", "api", want)
		site.Nodes[l].Restart()
		site.WaitConverged()
	}
	bcl, acl = anyClient(t, b), anyClient(t, a)

	// From now on A knows only a follower of B: after the partition, its
	// stream can only come back through that follower, which relays it to
	// B's leader.
	bFollower := b.Nodes[b.Follower()]
	aLeader := a.Nodes[a.Leader()].Server
	fb, _ := aLeader.Store().ForeignBundle("site-b.strait")
	fb = proto.Clone(fb).(*statepb.ForeignBundle)
	fb.PeerAddresses = []string{bFollower.Addr}
	if _, _, err := aLeader.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: fb}}); err != nil {
		t.Fatal(err)
	}

	// Partition: A keeps serving the last known imports, marked stale,
	// and converges after the heal without anyone doing anything.
	before, _ := imported(a, "site-b", "payments", "api")
	w.Cut()
	registerAt(t, bcl, "payments", "api", "api-late", "10.1.0.8", apipb.Health_HEALTH_PASSING)
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		p := peerStatus(t, acl, "site-b")
		if p.Imports.State != apipb.PeerState_PEER_STATE_STALE {
			return fmt.Errorf("state %s during the partition", p.Imports.State)
		}
		return nil
	})
	if got, err := imported(a, "site-b", "payments", "api"); err != nil || !slices.Equal(got, before) {
		t.Fatalf("imports during the partition: %v %v, want the last known %v", got, err, before)
	}
	list, err := acl.Catalog.ListServices(ctx, &apipb.ListServicesRequest{Namespace: "payments"})
	if err != nil || len(list.Services) != 1 || !list.Services[0].Stale {
		t.Fatalf("service list during the partition: %v %v (want the import marked stale)", list, err)
	}
	w.Heal()
	want := append(slices.Clone(before), "api-late")
	slices.Sort(want)
	waitImported(t, a, "site-b", "payments", "api", want)
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		if s := peerStatus(t, acl, "site-b").Imports.State; s != apipb.PeerState_PEER_STATE_ACTIVE {
			return fmt.Errorf("state %s after the heal", s)
		}
		return nil
	})

	// Unexport: the import disappears.
	if _, err := bcl.Federation.Unexport(ctx, &apipb.UnexportRequest{Namespace: "payments", Service: "api"}); err != nil {
		t.Fatal(err)
	}
	waitImported(t, a, "site-b", "payments", "api", nil)

	// Removing the peering (from A) removes the imports on both sides.
	if _, err := bcl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "payments", Service: "api", To: []string{"site-a"}}}); err != nil {
		t.Fatal(err)
	}
	waitImported(t, a, "site-b", "payments", "api", want)
	if _, err := acl.Federation.Remove(ctx, &apipb.RemovePeeringRequest{Name: "site-b"}); err != nil {
		t.Fatal(err)
	}
	waitImported(t, a, "site-b", "payments", "api", nil)
	waitImported(t, b, "site-a", "web", "front", nil)

	// Exports named the removed peer: they went with it, so that a site
	// joining later under the same name inherits nothing.
	if l, err := bcl.Federation.ListExports(ctx, &apipb.ListExportsRequest{}); err != nil || len(l.Exports) != 0 {
		t.Fatalf("exports after removing the peering: %v %v", l, err)
	}
	// Federating again takes a new token and new exports.
	federate(t, a, b, "site-b")
	if _, err := bcl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "payments", Service: "api", To: []string{"site-a"}}}); err != nil {
		t.Fatal(err)
	}
	waitImported(t, a, "site-b", "payments", "api", want)
}

// Three sites in a triangle, each exporting something different: every
// site imports exactly what was exported to it.
func TestReplicationTriangle(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b, c := wanSite(t, "site-a", 1, w), wanSite(t, "site-b", 1, w), wanSite(t, "site-c", 1, w)
	federate(t, a, b, "site-b")
	federate(t, b, c, "site-c")
	federate(t, c, a, "site-a")
	ctx := controlplanetest.Ctx(t)
	exp := func(site *controlplanetest.Cluster, svc string, to ...string) {
		cl := site.Client(0)
		registerAt(t, cl, "default", svc, svc+"-1", "10.9.0.1", apipb.Health_HEALTH_PASSING)
		if _, err := cl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "default", Service: svc, To: to}}); err != nil {
			t.Fatal(err)
		}
	}
	exp(a, "x", "site-b")       // A -> B only
	exp(b, "y", "*")            // B -> everyone
	exp(c, "z", "site-a")       // C -> A only
	exp(a, "private", "site-c") // A -> C, unregistered below
	waitImported(t, b, "site-a", "default", "x", []string{"x-1"})
	waitImported(t, a, "site-b", "default", "y", []string{"y-1"})
	waitImported(t, c, "site-b", "default", "y", []string{"y-1"})
	waitImported(t, a, "site-c", "default", "z", []string{"z-1"})
	waitImported(t, c, "site-a", "default", "private", []string{"private-1"})
	// Nothing else anywhere; and imports are never passed on.
	for _, s := range []*controlplanetest.Cluster{a, b, c} {
		sums, _ := s.Nodes[0].Server.Store().ServiceSummaries("")
		var names []string
		for _, sum := range sums {
			if sum.Service.Peer != "" {
				names = append(names, sum.Service.Peer+"/"+sum.Service.Name)
			}
		}
		site := s.Nodes[0].Server.Store().Site().Site
		want := map[string][]string{"site-a": {"site-b/y", "site-c/z"}, "site-b": {"site-a/x"}, "site-c": {"site-a/private", "site-b/y"}}[site]
		if !slices.Equal(names, want) {
			t.Errorf("%s imports %v, want %v", site, names, want)
		}
	}
	if _, err := a.Client(0).Catalog.Deregister(ctx, &apipb.DeregisterRequest{Namespace: "default", Service: "private"}); err != nil {
		t.Fatal(err)
	}
	waitImported(t, c, "site-a", "default", "private", nil)
	// Gateways are announced to every peer, whatever is exported.
	if _, err := gatewayClient(t, b, "gw-1").Gateway.Heartbeat(ctx, &apipb.GatewayHeartbeatRequest{WanAddress: "192.0.2.10:8443"}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*controlplanetest.Cluster{a, c} {
		controlplanetest.WaitFor(t, 10*time.Second, func() error {
			p := peerStatus(t, s.Client(0), "site-b")
			if !slices.Equal(p.Imports.Gateways, []string{"192.0.2.10:8443"}) {
				return fmt.Errorf("gateways of site-b as seen by a peer: %v", p.Imports.Gateways)
			}
			return nil
		})
	}
}
