package controlplane_test

import (
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/jointoken"
	"github.com/straitmesh/strait/trust/mtls"
)

// BenchmarkXDSPush: 1,000 ADS subscribers (real gRPC streams over mTLS
// with a gateway SVID, 50 per connection) hold site B's gateway
// configuration; each iteration registers one instance of an exported
// service and measures, per subscriber, the time until it has received
// the endpoints of the new snapshot.
func BenchmarkXDSPush(b *testing.B) {
	const subscribers, perConn = 1000, 50
	w := wan.New(0)
	b.Cleanup(func() { w.Close() })
	site := func(name string) *controlplanetest.Cluster {
		return controlplanetest.Start(b, 1, controlplanetest.Options{Site: name, BundleEndpoint: true, InMemoryRaft: true,
			Tweak: func(c *controlplane.Config) { c.PeerDialer = w.Dial }})
	}
	a, s := site("site-a"), site("site-b")
	federate(b, a, s, "site-b")
	ctx := controlplanetest.Ctx(b)
	cl := s.Client(0)
	registerAt(b, cl, "bench", "api", "i0", "10.0.0.1", apipb.Health_HEALTH_PASSING)
	if _, err := cl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "bench", Service: "api", To: []string{"site-a"}}}); err != nil {
		b.Fatal(err)
	}
	ident := gatewayIdentity(b, s, "bench-gw")

	type sub struct {
		mu      sync.Mutex
		version string
		at      time.Time
	}
	subs := make([]*sub, subscribers)
	var conns []*apiclient.Client
	for i := range subs {
		if i%perConn == 0 {
			c, err := apiclient.Dial(apiclient.Config{Addr: s.Nodes[0].Addr, CA: ident.Bundle().X509Authorities(), Identity: ident})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			conns = append(conns, c)
		}
		subs[i] = &sub{}
		stream, err := discovery.NewAggregatedDiscoveryServiceClient(conns[len(conns)-1].Conn()).StreamAggregatedResources(ctx, grpc.MaxCallRecvMsgSize(64<<20))
		if err != nil {
			b.Fatal(err)
		}
		node := &core.Node{Id: "gateway/bench-gw"}
		for _, t := range []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.SecretType} {
			if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
				b.Fatal(err)
			}
		}
		go func(me *sub) {
			for {
				resp, err := stream.Recv()
				if err != nil {
					return
				}
				if resp.TypeUrl == resource.EndpointType {
					me.mu.Lock()
					me.version, me.at = resp.VersionInfo, time.Now()
					me.mu.Unlock()
				}
				if stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}) != nil {
					return
				}
			}
		}(subs[i])
	}
	versions := func() map[string]int {
		out := map[string]int{}
		for _, sb := range subs {
			sb.mu.Lock()
			out[sb.version]++
			sb.mu.Unlock()
		}
		return out
	}
	controlplanetest.WaitFor(b, 60*time.Second, func() error {
		if v := versions(); len(v) != 1 || v[""] != 0 {
			return fmt.Errorf("subscribers by endpoint version: %v", v)
		}
		return nil
	})
	var all []time.Duration
	n := 1
	for b.Loop() {
		before := versions()
		n++
		start := time.Now()
		registerAt(b, cl, "bench", "api", fmt.Sprint("i", n), fmt.Sprintf("10.0.%d.%d", n/250, n%250+1), apipb.Health_HEALTH_PASSING)
		controlplanetest.WaitFor(b, 60*time.Second, func() error {
			for _, sb := range subs {
				sb.mu.Lock()
				_, old := before[sb.version]
				sb.mu.Unlock()
				if old {
					return fmt.Errorf("not everyone has the new endpoints")
				}
			}
			return nil
		})
		for _, sb := range subs {
			sb.mu.Lock()
			all = append(all, sb.at.Sub(start))
			sb.mu.Unlock()
		}
	}
	b.ReportMetric(float64(percentile(all, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(all, 0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(percentile(all, 1).Microseconds())/1000, "max-ms")
}

// gatewayIdentity joins a gateway to c and returns its identity (what a
// gateway holds after its first start).
func gatewayIdentity(b testing.TB, c *controlplanetest.Cluster, name string) *mtls.Identity {
	ctx := controlplanetest.Ctx(b)
	tok, err := c.Client(0).ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_GATEWAY, MaxUses: 1})
	if err != nil {
		b.Fatal(err)
	}
	jt, err := jointoken.Parse(tok.Secret)
	if err != nil {
		b.Fatal(err)
	}
	conn, err := jointoken.Dial(c.Nodes[0].Addr, jt)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	resp, err := apipb.NewGatewayClient(conn).Join(ctx, &apipb.GatewayJoinRequest{Name: name, Csr: csr})
	if err != nil {
		b.Fatal(err)
	}
	parse := func(ders [][]byte) []*x509.Certificate {
		var out []*x509.Certificate
		for _, d := range ders {
			cert, err := x509.ParseCertificate(d)
			if err != nil {
				b.Fatal(err)
			}
			out = append(out, cert)
		}
		return out
	}
	id := mtls.NewIdentity(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(resp.TrustDomain), parse(resp.Bundle)), nil)
	if err := id.SetSVID(parse(resp.Svid), key); err != nil {
		b.Fatal(err)
	}
	return id
}
