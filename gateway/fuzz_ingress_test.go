package gateway

import (
	"bufio"
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/xds"
	"github.com/straitmesh/strait/internal/tunnelmux"
	"github.com/straitmesh/strait/trust/ca"
)

// ingressSNI is the one service the fuzzed ingress serves.
const ingressSNI = "tcp.echo.demo.a.strait"

// ingressGateway is a gateway of a.strait whose configuration comes from
// the server's builder: demo/echo (an instance that closes at once) is
// exported to peers b and c; b may reach it, and so may c, but for a
// deny of c's shop/batch, and an allow of c's shop/web.
func ingressGateway(f *testing.F) *Gateway {
	inst, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { inst.Close() })
	go func() {
		for {
			c, err := inst.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := uint32(inst.Addr().(*net.TCPAddr).Port)
	var peers []xds.Peer
	for _, name := range []string{"a", "b", "c"} {
		root, err := ca.Generate(spiffeid.RequireTrustDomainFromString(name+".strait"), time.Now(), 0)
		if err != nil {
			f.Fatal(err)
		}
		peers = append(peers, xds.Peer{Name: name, TrustDomain: name + ".strait", CAs: []*x509.Certificate{root.Certificate()}, Gateways: []string{"10.0.0.1:8443"}})
	}
	res, err := xds.Build(xds.Inputs{
		TrustDomain: "a.strait", CAs: peers[0].CAs, Peers: peers[1:],
		Exports: []xds.Service{{Def: &apipb.Service{Namespace: "demo", Name: "echo", Ports: []*apipb.ServicePort{{Name: "tcp", Protocol: apipb.Protocol_PROTOCOL_TCP}}},
			Instances: []*apipb.Instance{{Id: "e1", Address: "127.0.0.1", Ports: map[string]uint32{"tcp": port}}}, To: []string{"b", "c"}}},
		Intentions: []*apipb.Intention{
			{Source: "b", Destination: "demo/echo", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW},
			{Source: "c", Destination: "demo/echo", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW},
			{Source: "c/shop/batch", Destination: "demo/echo", Action: apipb.IntentionAction_INTENTION_ACTION_DENY},
			{Source: "c/shop/web", Destination: "demo/echo", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW},
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	r, ps := resources{}, pools{}
	for _, typ := range subscribed {
		resp := &discovery.DiscoveryResponse{TypeUrl: typ}
		for _, m := range res[typ] {
			a, err := anypb.New(m)
			if err != nil {
				f.Fatal(err)
			}
			resp.Resources = append(resp.Resources, a)
		}
		if r[typ], err = decode(resp); err != nil {
			f.Fatal(err)
		}
	}
	cfg, err := compile("1", r, ps)
	if err != nil {
		f.Fatal(err)
	}
	if _, ok := cfg.ingress[ingressSNI]; !ok {
		f.Fatalf("no ingress chain for %s", ingressSNI)
	}
	g, err := New(Config{Name: "gw", DataDir: f.TempDir(), Servers: []string{"127.0.0.1:1"}, WANAddr: "127.0.0.1:0",
		HandshakeTimeout: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	g.td = spiffeid.RequireTrustDomainFromString("a.strait")
	g.cur = cfg
	return g
}

// FuzzIngressHeader: whatever stream header a peer gateway sends, and
// whichever peer it is, the ingress answers with a status, and exactly
// the well-formed headers for the exported name from peer b are let
// through, whatever source they claim: a claim is not an identity, so it
// never changes the decision. Peer c gets nothing, whatever it claims:
// the deny naming one of its services applies to all of it (fail-closed),
// and the allow naming one grants nothing.
func FuzzIngressHeader(f *testing.F) {
	g := ingressGateway(f)
	c1, c2 := net.Pipe()
	client, server := tunnelmux.Client(c1, tunnelmux.Config{}), tunnelmux.Server(c2, tunnelmux.Config{})
	f.Cleanup(func() { client.Close(); server.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	f.Cleanup(cancel)
	gwB, _ := spiffeid.FromString("spiffe://b.strait/strait/gateway/gw")
	gwC, _ := spiffeid.FromString("spiffe://c.strait/strait/gateway/gw")
	peers := []spiffeid.ID{gwB, gwC} // (the TLS layer admits only peers' gateways)
	// Streams are opened one at a time: each is accepted as the peer
	// sent on next just before it was opened.
	next := make(chan spiffeid.ID, 1)
	go func() {
		for {
			st, err := server.Accept()
			if err != nil {
				return
			}
			go g.ingressStream(ctx, st, <-next)
		}
	}()
	f.Add(streamHeader(ingressSNI, "shop/web"), uint8(0))
	f.Add(streamHeader(ingressSNI, "shop/web"), uint8(1))
	f.Add(streamHeader(ingressSNI, ""), uint8(0))
	f.Add(streamHeader(ingressSNI, "shop/web/x"), uint8(0))
	f.Add(streamHeader(ingressSNI+".", "shop/web"), uint8(0))
	f.Add(streamHeader("tcp.echo.demo.b.strait", "shop/web"), uint8(0))
	f.Add(streamHeader(ingressSNI, "../shop/web"), uint8(0))
	f.Add([]byte{1, 0x80, 0}, uint8(0))
	f.Fuzz(func(t *testing.T, hdr []byte, who uint8) {
		if len(hdr) > tunnelmux.MaxOpenPayload {
			return
		}
		peer := peers[int(who)%len(peers)]
		next <- peer
		st, err := client.Open(hdr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		code, err := bufio.NewReader(st).ReadByte()
		if err != nil {
			t.Fatalf("no answer to header %q from %s: %v", hdr, peer, err)
		}
		h, perr := parseHeader(hdr)
		switch {
		case code > statusBadRequest:
			t.Fatalf("status %d", code)
		case perr != nil && code != statusBadRequest:
			t.Fatalf("malformed header %q (%v): status %d, want bad request", hdr, perr, code)
		case code == statusOK && (peer != gwB || h.SNI != ingressSNI):
			t.Fatalf("let through: peer %s, SNI %q, source %q", peer, h.SNI, h.Source)
		case perr == nil && peer == gwB && h.SNI == ingressSNI && code != statusOK:
			t.Fatalf("the allowed site was refused (claiming source %q): status %d", h.Source, code)
		}
	})
}

// streamHeader is a tunnel stream header (for seeds).
func streamHeader(sni, source string) []byte { return header{SNI: sni, Source: source}.encode() }
