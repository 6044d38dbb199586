package hostilepeer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/straitmesh/strait/bench/hostilepeer"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/gateway"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/sitetest"
)

// site is a real one-server site with mesh DNS forwarding to a fake
// upstream, and a real gateway.
type site struct {
	*controlplanetest.Cluster
	upstream *hostilepeer.FakeUpstream
	wanAddr  string
}

func startSite(t *testing.T) *site {
	t.Helper()
	up, err := hostilepeer.NewFakeUpstream(context.Background(), "127.0.0.1:0", hostilepeer.UpstreamSilent, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "victim", DNS: true, BundleEndpoint: true, InMemoryRaft: true,
		Tweak: func(c *controlplane.Config) {
			c.DNSUpstreams = []string{up.Addr}
			c.PeerHeartbeat, c.PeerStaleAfter = 200*time.Millisecond, 5*time.Second
		}})
	gw := sitetest.StartGateway(t, c, gateway.Config{Name: "gw1", HeartbeatInterval: 200 * time.Millisecond, DrainTimeout: time.Second,
		HandshakeTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	return &site{Cluster: c, upstream: up, wanAddr: gw.Config.WANListener.Addr().String()}
}

// join makes a fake peer that redeems an invite of s and serves script.
func join(t *testing.T, s *site, name string, script hostilepeer.Script) (*hostilepeer.Peer, *hostilepeer.Server) {
	t.Helper()
	ctx := controlplanetest.Ctx(t)
	p, err := hostilepeer.New(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	srv, err := p.Serve(context.Background(), "127.0.0.1:0", script)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := s.Client(0).Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{Peer: name})
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Accept(ctx, inv.Token, hostilepeer.AcceptRequest{Addresses: []string{srv.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	if got != name {
		t.Fatalf("the site named the peer %q, want %q", got, name)
	}
	return p, srv
}

func importCounts(t *testing.T, s *site, peer string) (uint32, uint32, *apipb.ImportStatus) {
	ctx := controlplanetest.Ctx(t)
	resp, err := s.Client(0).Federation.List(ctx, &apipb.ListPeersFedRequest{Name: peer})
	if err != nil || len(resp.Peers) != 1 {
		return 0, 0, nil
	}
	im := resp.Peers[0].GetImports()
	return im.GetServices(), im.GetInstances(), im
}

// TestFakePeerJoinsAndFloods: the fake peer redeems a real invite, is
// listed as a peer, and its resync of 500 services is imported whole.
func TestFakePeerJoinsAndFloods(t *testing.T) {
	s := startSite(t)
	const n = 500
	_, srv := join(t, s, "flood", hostilepeer.Flood(n))
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		svcs, insts, _ := importCounts(t, s, "flood")
		if svcs != n || insts != n {
			return fmt.Errorf("imported %d services, %d instances; want %d each", svcs, insts, n)
		}
		if srv.Acked() != 1 {
			return fmt.Errorf("version %d acknowledged, want 1 (the resync)", srv.Acked())
		}
		return nil
	})
}

// TestFakePeerScripts: a resync that never finishes imports nothing; the
// gateway script's addresses reach the site (whatever it does with them);
// churn replaces the whole export, round after round.
func TestFakePeerScripts(t *testing.T) {
	s := startSite(t)
	_, never := join(t, s, "never", hostilepeer.NeverFinish(1<<20))
	_, churn := join(t, s, "churn", hostilepeer.Churn(5, 2, 100*time.Millisecond))
	join(t, s, "gws", hostilepeer.Gateways([]string{"127.0.0.1:1", "127.0.0.2:2"}))
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		_, _, im := importCounts(t, s, "gws")
		if len(im.GetGateways()) == 0 {
			return errors.New("no gateways imported from the fake peer yet")
		}
		return nil
	})
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		if never.Streams() == 0 {
			return errors.New("the site has not called the never-finishing peer yet")
		}
		return nil
	})
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		svcs, _, _ := importCounts(t, s, "churn")
		if churn.Acked() != 3 || svcs != 5 {
			return fmt.Errorf("churn: version %d acknowledged, %d services imported; want 3 and 5", churn.Acked(), svcs)
		}
		return nil
	})
	if svcs, _, _ := importCounts(t, s, "never"); svcs != 0 {
		t.Fatalf("%d services imported from a resync that never finished", svcs)
	}
}

// TestFakeGatewayFloods: as a peer's gateway, the harness opens a tunnel
// to the real gateway and floods it with streams for names nobody
// exports: every stream gets an answer, "unknown".
func TestFakeGatewayFloods(t *testing.T) {
	s := startSite(t)
	p, _ := join(t, s, "evil", hostilepeer.Flood(0))
	ctx := controlplanetest.Ctx(t)
	var tun *hostilepeer.Tunnel
	// The gateway learns the new peer's bundle over xDS.
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		var err error
		tun, err = p.Tunnel(ctx, s.wanAddr)
		return err
	})
	r := tun.SNIFlood(ctx, p.SiteTD().Name(), "nothing", 200)
	if r.Refused != 200 || r.Failed != 0 {
		t.Fatalf("SNI flood: %s (first refusal %q, first error %v), want 200 refused", r, r.FirstRefusal, r.FirstError)
	}
	if !strings.Contains(r.FirstRefusal, "not exported") {
		t.Fatalf("refusal %q", r.FirstRefusal)
	}
	sctx, cancel := context.WithCancel(ctx)
	r = tun.StreamFlood(sctx, meshname.SNI("tcp", "api", "shop", p.SiteTD().Name()), 50)
	cancel()
	if r.Opened != 50 {
		t.Fatalf("stream flood: %s, want 50 answered", r)
	}
}

// TestIdleAndDNSFlood: idle connections of every mode are held until
// closed, and a DNS flood to a forwarding server with a silent upstream
// reaches the upstream.
func TestIdleAndDNSFlood(t *testing.T) {
	s := startSite(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, mode := range []hostilepeer.IdleMode{hostilepeer.IdleTCP, hostilepeer.IdlePartialHello, hostilepeer.IdleTLS, hostilepeer.IdleH2} {
		idle := hostilepeer.HoldIdle(ctx, s.Nodes[0].Addr, 20, mode, "")
		if idle.Opened != 20 {
			t.Fatalf("%s: opened %d of 20: %v", mode, idle.Opened, idle.FirstError)
		}
		if idle.Open() == 0 {
			t.Fatalf("%s: every connection closed at once", mode)
		}
		idle.Close()
		if idle.Open() != 0 {
			t.Fatalf("%s: %d connections still open after Close", mode, idle.Open())
		}
	}
	// Through the gateway's passthrough to the servers.
	idle := hostilepeer.HoldIdle(ctx, s.wanAddr, 10, hostilepeer.IdleH2, meshname.ServersSNI("victim.strait"))
	if idle.Opened != 10 {
		t.Fatalf("passthrough: opened %d of 10: %v", idle.Opened, idle.FirstError)
	}
	idle.Close()

	r, err := hostilepeer.DNSFlood(ctx, s.Nodes[0].DNSAddr, 100, 1000, "example.org", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 100 {
		t.Fatalf("dns flood: %s", r)
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if q := s.upstream.Queries.Load(); q == 0 {
			return errors.New("the upstream heard no forwarded query")
		}
		return nil
	})
}

// TestFakeGatewayPushes: streams to an allowed instance that never reads
// are answered OK and take the bytes the gateway's window allows.
func TestFakeGatewayPushes(t *testing.T) {
	s := startSite(t)
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	go func() { // accepts, never reads
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	ctx := controlplanetest.Ctx(t)
	cl := s.Client(0)
	port := uint32(sink.Addr().(*net.TCPAddr).Port)
	if _, err := cl.Catalog.Register(ctx, &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "shop", Name: "sink", Ports: []*apipb.ServicePort{{Name: "tcp", Protocol: apipb.Protocol_PROTOCOL_TCP}}},
		Instance: &apipb.Instance{Id: "sink-1", Address: "127.0.0.1", Ports: map[string]uint32{"tcp": port}},
	}); err != nil {
		t.Fatal(err)
	}
	p, _ := join(t, s, "evil", hostilepeer.Flood(0))
	if _, err := cl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "shop", Service: "sink", To: []string{"evil"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Intentions.Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{
		Source: "evil", Destination: "shop/sink", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW}}); err != nil {
		t.Fatal(err)
	}
	sni := meshname.SNI("tcp", "sink", "shop", p.SiteTD().Name())
	var tun *hostilepeer.Tunnel
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		var err error
		if tun, err = p.Tunnel(ctx, s.wanAddr); err != nil {
			return err
		}
		st, code, msg, err := tun.Open(ctx, sni, "")
		if err != nil {
			return err
		}
		st.Close()
		if code != hostilepeer.StatusOK {
			tun.Close()
			return fmt.Errorf("status %d: %s", code, msg)
		}
		return nil
	})
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	r, written := tun.Push(pctx, sni, 2, 1<<20)
	if r.OK != 2 || written != 2<<20 {
		t.Fatalf("push: %s, %d bytes written; want 2 streams of 1 MiB", r, written)
	}
}
