package gateway

import (
	"crypto/x509"
	"encoding/binary"
	"net"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/xds"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust/ca"
)

// xdsSeed is a real gateway configuration from the server's builder (a
// peer with two gateways, an imported service on a virtual IP, an
// exported service with an instance and an intention) as discovery
// responses, one per type, each a uint32 length and the message.
func xdsSeed(f *testing.F) []byte {
	own, err := ca.Generate(spiffeid.RequireTrustDomainFromString("a.strait"), time.Now(), 0)
	if err != nil {
		f.Fatal(err)
	}
	peer, err := ca.Generate(spiffeid.RequireTrustDomainFromString("b.strait"), time.Now(), 0)
	if err != nil {
		f.Fatal(err)
	}
	ports := []*apipb.ServicePort{{Name: "tcp", Protocol: apipb.Protocol_PROTOCOL_TCP}}
	in := xds.Inputs{
		TrustDomain: "a.strait", CAs: []*x509.Certificate{own.Certificate()},
		Peers: []xds.Peer{{Name: "b", TrustDomain: "b.strait", CAs: []*x509.Certificate{peer.Certificate()}, Gateways: []string{"10.0.0.1:8443", "10.0.0.2:8443"}}},
		Imports: []xds.Service{{Def: &apipb.Service{Namespace: "shop", Name: "api", Peer: "b", VirtualIp: "127.240.0.7", Ports: ports},
			Instances: []*apipb.Instance{{Id: "i1", Address: "10.1.0.1", Ports: map[string]uint32{"tcp": 7000}}}}},
		Exports: []xds.Service{{Def: &apipb.Service{Namespace: "demo", Name: "echo", Ports: ports},
			Instances: []*apipb.Instance{{Id: "e1", Address: "127.0.0.1", Ports: map[string]uint32{"tcp": 7000}}}, To: []string{"b"}}},
		Intentions: []*apipb.Intention{{Source: "b", Destination: "demo/echo", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW}},
	}
	res, err := xds.Build(in)
	if err != nil {
		f.Fatal(err)
	}
	var out []byte
	for _, typ := range subscribed {
		resp := &discovery.DiscoveryResponse{TypeUrl: typ, VersionInfo: "1"}
		for _, m := range res[typ] {
			a, err := anypb.New(m)
			if err != nil {
				f.Fatal(err)
			}
			resp.Resources = append(resp.Resources, a)
		}
		b, err := proto.Marshal(resp)
		if err != nil {
			f.Fatal(err)
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(b)))
		out = append(out, b...)
	}
	return out
}

// FuzzCompile: whatever resources a server (or something speaking for
// it) sends, the gateway's ADS loop (decode, then compile over the last
// accepted resources of the other types) never panics, and a config it
// accepts is one the data path can use: every egress listener has an
// address and an outbound cluster, every ingress chain has its
// authorization and an inbound cluster, every outbound cluster's stream
// header names a valid SNI of the cluster's peer, and endpoint pools
// exist exactly for the live clusters.
func FuzzCompile(f *testing.F) {
	f.Add(xdsSeed(f))
	f.Add([]byte{0, 0, 0, 3, 1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		cur, ps := resources{}, pools{}
		for n := 0; len(data) >= 4 && n < 8; n++ {
			size := int(min(binary.BigEndian.Uint32(data), uint32(len(data)-4)))
			msg := data[4 : 4+size]
			data = data[4+size:]
			var resp discovery.DiscoveryResponse
			if proto.Unmarshal(msg, &resp) != nil {
				continue
			}
			got, err := decode(&resp)
			if err != nil {
				continue // NACKed
			}
			next := resources{}
			for k, v := range cur {
				next[k] = v
			}
			next[resp.TypeUrl] = got
			cfg, err := compile(resp.VersionInfo, next, ps)
			if err != nil {
				continue // NACKed; the previous config stays
			}
			cur = next
			checkConfig(t, cfg, cur, ps)
		}
	})
}

func checkConfig(t *testing.T, c *config, r resources, ps pools) {
	t.Helper()
	for name, l := range c.egress {
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			t.Fatalf("egress listener %s: address %q: %v", name, l.addr, err)
		}
		if c.out[l.cluster] == nil {
			t.Fatalf("egress listener %s: no outbound cluster %q", name, l.cluster)
		}
	}
	for sni, ch := range c.ingress {
		if ch.rules == nil {
			t.Fatalf("ingress chain for %q has no authorization", sni)
		}
		if c.in[ch.cluster] == nil {
			t.Fatalf("ingress chain for %q: no inbound cluster %q", sni, ch.cluster)
		}
	}
	for name, o := range c.out {
		h, err := parseHeader(o.hdr)
		if err != nil {
			t.Fatalf("outbound cluster %s: stream header: %v", name, err)
		}
		_, _, _, td, ok := meshname.ParseSNI(h.SNI)
		if !ok || td != o.peerTD || td == "" {
			t.Fatalf("outbound cluster %s: SNI %q for peer %q", name, h.SNI, o.peerTD)
		}
		if o.pool == nil || o.timeout < 0 {
			t.Fatalf("outbound cluster %s: pool %v, timeout %s", name, o.pool, o.timeout)
		}
	}
	for name, in := range c.in {
		if in.pool == nil {
			t.Fatalf("inbound cluster %s without a pool", name)
		}
	}
	if len(ps) != len(r[resource.ClusterType]) {
		t.Fatalf("%d endpoint pools for %d clusters", len(ps), len(r[resource.ClusterType]))
	}
	for td, certs := range c.bundles {
		if len(certs) == 0 {
			t.Fatalf("an empty bundle for %s", td)
		}
	}
}
