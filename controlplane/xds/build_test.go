package xds_test

import (
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/xds"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/policy"
	"github.com/straitmesh/strait/trust/ca"
)

func caCert(t *testing.T, td string) *x509.Certificate {
	t.Helper()
	root, err := ca.Generate(spiffeid.RequireTrustDomainFromString(td), time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return root.Certificate()
}

func inputs(t *testing.T) xds.Inputs {
	port := []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}
	inst := func(addr string, p uint32) *apipb.Instance {
		return &apipb.Instance{Address: addr, Ports: map[string]uint32{"http": p}}
	}
	return xds.Inputs{
		TrustDomain: "aws-east.strait", CAs: []*x509.Certificate{caCert(t, "aws-east.strait")},
		Peers: []xds.Peer{{Name: "gcp-west", TrustDomain: "gcp-west.strait", CAs: []*x509.Certificate{caCert(t, "gcp-west.strait")}, Gateways: []string{"192.0.2.1:8443", "192.0.2.2:8443"}}},
		Imports: []xds.Service{{Def: &apipb.Service{Peer: "gcp-west", Namespace: "payments", Name: "api", VirtualIp: "127.240.0.1", Ports: port},
			Instances: []*apipb.Instance{inst("10.8.0.1", 9090), inst("10.8.0.2", 8080)}}},
		Exports: []xds.Service{{Def: &apipb.Service{Namespace: "web", Name: "front", Ports: port},
			Instances: []*apipb.Instance{inst("10.0.0.1", 80), inst("10.0.0.2", 80)}, To: []string{"gcp-west"}}},
		Intentions: []*apipb.Intention{{Source: "gcp-west/*/*", Destination: "web/front", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW}},
	}
}

func TestBuildGatewayResources(t *testing.T) {
	res, err := xds.Build(inputs(t))
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for typ, list := range res {
		count[typ] = len(list)
	}
	// Clusters: out (import) + in (export); listeners: egress + ingress;
	// secrets: two bundles.
	if count[resource.ClusterType] != 2 || count[resource.EndpointType] != 2 || count[resource.ListenerType] != 2 || count[resource.SecretType] != 2 {
		t.Fatalf("resource counts %v", count)
	}
	var egress, ingress *listener.Listener
	for _, l := range res[resource.ListenerType] {
		l := l.(*listener.Listener)
		if l.Name == meshname.IngressListener {
			ingress = l
		} else {
			egress = l
		}
	}
	// The egress listener is on the virtual IP, at the port the instances
	// use (the lowest when they differ).
	sa := egress.Address.GetSocketAddress()
	if egress.Name != meshname.OutCluster("gcp-west", "payments", "api", "http") || sa.Address != "127.240.0.1" || sa.GetPortValue() != 8080 {
		t.Fatalf("egress listener %s on %s:%d", egress.Name, sa.Address, sa.GetPortValue())
	}
	for _, c := range res[resource.EndpointType] {
		la := c.(*endpoint.ClusterLoadAssignment)
		if la.ClusterName == meshname.OutCluster("gcp-west", "payments", "api", "http") && len(la.Endpoints[0].LbEndpoints) != 2 {
			t.Fatalf("the out cluster reaches %d gateways, want 2", len(la.Endpoints[0].LbEndpoints))
		}
	}
	for _, c := range res[resource.ClusterType] {
		if c := c.(*cluster.Cluster); c.LbPolicy != cluster.Cluster_LEAST_REQUEST || c.OutlierDetection == nil {
			t.Fatalf("cluster %s: lb %s, outlier detection %v", c.Name, c.LbPolicy, c.OutlierDetection)
		}
	}
	if len(ingress.FilterChains) != 1 || ingress.FilterChains[0].FilterChainMatch.ServerNames[0] != "http.front.web.aws-east.strait" {
		t.Fatalf("ingress chains %v", ingress.FilterChains)
	}
	var rb rbacfilter.RBAC
	if err := ingress.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&rb); err != nil {
		t.Fatal(err)
	}
	if !policy.EvalRBAC(rb.Rules, "spiffe://gcp-west.strait/strait/gateway/gw-1") || policy.EvalRBAC(rb.Rules, "spiffe://other.strait/ns/web/svc/x") {
		t.Fatal("the ingress RBAC does not follow the intention")
	}
}

// TestBuildRefusesWhatEnvoyWouldReject: a resource that fails Envoy's own
// validation is never published.
func TestBuildRefusesWhatEnvoyWouldReject(t *testing.T) {
	in := inputs(t)
	for _, i := range in.Imports[0].Instances {
		i.Ports["http"] = 70000 // a listener port Envoy refuses
	}
	if _, err := xds.Build(in); err == nil {
		t.Fatal("built a listener on port 70000")
	}
}

// TestCompiledIntentionsAgreeWithPolicy: for random intention sets and
// sources, the RBAC rule the gateways enforce decides exactly as
// policy.Decide (the API's check) does.
func TestCompiledIntentionsAgreeWithPolicy(t *testing.T) {
	peers := map[string]xds.Peer{"a": {Name: "a", TrustDomain: "a.strait"}, "b": {Name: "b", TrustDomain: "b.strait"}}
	sites, nss, svcs := []string{"a", "b"}, []string{"x", "y", "*"}, []string{"p", "q", "*"}
	r := rand.New(rand.NewPCG(1, 2))
	pick := func(s []string) string { return s[r.IntN(len(s))] }
	for round := range 2000 {
		var ins []*apipb.Intention
		for range 1 + r.IntN(5) {
			ns := pick(nss)
			svc := pick(svcs)
			if ns == "*" {
				svc = "*"
			}
			a := apipb.IntentionAction_INTENTION_ACTION_ALLOW
			if r.IntN(2) == 0 {
				a = apipb.IntentionAction_INTENTION_ACTION_DENY
			}
			ins = append(ins, &apipb.Intention{Source: pick(sites) + "/" + ns + "/" + svc, Destination: "d/" + pick([]string{"api", "*"}), Action: a})
		}
		rules := xds.CompileIntentions(ins, peers, "d", "api")
		for _, src := range []policy.Source{{Site: "a", Namespace: "x", Service: "p"}, {Site: "b", Namespace: "y", Service: "q"}, {Site: "a"}, {Site: "b", Namespace: "x", Service: "q"}} {
			want, _ := policy.Decide(ins, src, "d", "api")
			principal := fmt.Sprintf("spiffe://%s.strait/ns/%s/svc/%s", src.Site, src.Namespace, src.Service)
			if src.Service == "" {
				principal = "spiffe://" + src.Site + ".strait/strait/gateway/gw"
			}
			if got := policy.EvalRBAC(rules, principal); got != want {
				t.Fatalf("round %d: %s: RBAC says %v, policy says %v; intentions %v", round, src, got, want, ins)
			}
		}
	}
}

func TestBuildProxylessResources(t *testing.T) {
	in := inputs(t)
	in.Domain = "mesh."
	res, err := xds.BuildProxyless(in)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range res[resource.ListenerType] {
		names = append(names, l.(*listener.Listener).Name)
	}
	// The lowest instance port of the imported service, and the bare name.
	if fmt.Sprint(names) != "[api.payments.gcp-west.mesh api.payments.gcp-west.mesh:8080]" {
		t.Fatalf("listeners %v", names)
	}
	if len(res[resource.ClusterType]) != 1 || len(res[resource.EndpointType]) != 1 || len(res[resource.SecretType]) != 0 {
		t.Fatalf("resources %v", res)
	}
	c := res[resource.ClusterType][0].(*cluster.Cluster)
	var up tlsv3.UpstreamTlsContext
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&up); err != nil {
		t.Fatal(err)
	}
	vc := up.GetCommonTlsContext().GetValidationContext()
	if got := vc.GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact(); got != "spiffe://gcp-west.strait/ns/payments/svc/api" {
		t.Fatalf("the client would accept %q", got)
	}
	if vc.GetCaCertificateProviderInstance().GetInstanceName() != xds.ProxylessCertProvider ||
		up.GetCommonTlsContext().GetTlsCertificateProviderInstance().GetInstanceName() != xds.ProxylessCertProvider {
		t.Fatal("the cluster does not use the bootstrap's certificate provider")
	}
	la := res[resource.EndpointType][0].(*endpoint.ClusterLoadAssignment)
	if a := la.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress(); a.Address != "127.240.0.1" || a.GetPortValue() != 8080 {
		t.Fatalf("endpoint %v, want the virtual IP", a)
	}
	// Nothing for an import without instances.
	in.Imports[0].Instances = nil
	if res, _ := xds.BuildProxyless(in); len(res[resource.ListenerType]) != 0 {
		t.Fatal("a listener for an import without instances")
	}
}

// TestIngressAdmitsOnlyThePeersExportedTo: a service exported to one peer
// gets an ingress chain whose RBAC principals, SAN matchers and SPIFFE
// trust domains name that peer's trust domain only, even though an
// intention allows another peer; a service exported to nobody that is a
// peer gets no chain; "*" admits every peer.
func TestIngressAdmitsOnlyThePeersExportedTo(t *testing.T) {
	in := inputs(t)
	in.Peers = append(in.Peers, xds.Peer{Name: "evil", TrustDomain: "evil.strait", CAs: []*x509.Certificate{caCert(t, "evil.strait")}})
	in.Intentions = []*apipb.Intention{
		{Source: "gcp-west/*/*", Destination: "web/front", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW},
		{Source: "evil/*/*", Destination: "web/*", Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW},
		{Source: "evil/batch/*", Destination: "web/front", Action: apipb.IntentionAction_INTENTION_ACTION_DENY},
	}
	chainOf := func(t *testing.T, in xds.Inputs) *listener.FilterChain {
		t.Helper()
		res, err := xds.Build(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range res[resource.ListenerType] {
			if l := l.(*listener.Listener); l.Name == meshname.IngressListener {
				return l.FilterChains[0]
			}
		}
		return nil
	}
	fc := chainOf(t, in)
	var rb rbacfilter.RBAC
	if err := fc.Filters[0].GetTypedConfig().UnmarshalTo(&rb); err != nil {
		t.Fatal(err)
	}
	if !policy.EvalRBAC(rb.Rules, "spiffe://gcp-west.strait/strait/gateway/gw-1") {
		t.Fatal("the peer the service is exported to is refused")
	}
	if policy.EvalRBAC(rb.Rules, "spiffe://evil.strait/strait/gateway/gw-1") || policy.EvalRBAC(rb.Rules, "spiffe://evil.strait/ns/web/svc/x") {
		t.Fatal("a peer the service is not exported to is admitted by its intention")
	}
	// Every principal Envoy would evaluate is of gcp-west's trust domain.
	var walk func(p *rbacconfig.Principal)
	walk = func(p *rbacconfig.Principal) {
		switch id := p.GetIdentifier().(type) {
		case *rbacconfig.Principal_Authenticated_:
			m := id.Authenticated.GetPrincipalName()
			if s := m.GetExact() + m.GetPrefix(); !strings.HasPrefix(s, "spiffe://gcp-west.strait/") {
				t.Errorf("principal %q outside the exported peer's trust domain", s)
			}
		case *rbacconfig.Principal_AndIds:
			walk(id.AndIds.Ids[0]) // the rest subtract denies
		default:
			t.Errorf("unexpected principal %v", p)
		}
	}
	for _, pol := range rb.Rules.Policies {
		for _, p := range pol.Principals {
			walk(p)
		}
	}
	var dt tlsv3.DownstreamTlsContext
	if err := fc.TransportSocket.GetTypedConfig().UnmarshalTo(&dt); err != nil {
		t.Fatal(err)
	}
	vc := dt.CommonTlsContext.GetValidationContext()
	var spiffe tlsv3.SPIFFECertValidatorConfig
	if err := vc.GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(&spiffe); err != nil {
		t.Fatal(err)
	}
	if len(spiffe.TrustDomains) != 1 || spiffe.TrustDomains[0].Name != "gcp-west.strait" ||
		len(vc.MatchTypedSubjectAltNames) != 1 || vc.MatchTypedSubjectAltNames[0].GetMatcher().GetPrefix() != "spiffe://gcp-west.strait/strait/gateway/" {
		t.Fatalf("the chain's TLS admits %v / %v", spiffe.TrustDomains, vc.MatchTypedSubjectAltNames)
	}
	// The metadata names the service, the one peer and its intention only.
	md := fc.GetMetadata().GetFilterMetadata()[xds.IngressMetadata].AsMap()
	if fmt.Sprintf("%v %v %v", md["service"], md["peers"], md["intentions"]) !=
		"web/front [map[name:gcp-west trust_domain:gcp-west.strait]] [map[action:allow destination:web/front source:gcp-west/*/*]]" {
		t.Fatalf("metadata %v", md)
	}

	// Exported to every peer: both admitted, the deny still applies; as
	// it names one of evil's namespaces, and a gateway's ID cannot say
	// which workload is behind it, it also denies evil's gateways
	// (fail-closed), while evil's workloads elsewhere are allowed.
	in.Exports[0].To = []string{"*"}
	if err := chainOf(t, in).Filters[0].GetTypedConfig().UnmarshalTo(&rb); err != nil {
		t.Fatal(err)
	}
	if policy.EvalRBAC(rb.Rules, "spiffe://evil.strait/strait/gateway/gw-1") || policy.EvalRBAC(rb.Rules, "spiffe://evil.strait/ns/batch/svc/x") ||
		!policy.EvalRBAC(rb.Rules, "spiffe://evil.strait/ns/ops/svc/x") {
		t.Fatal(`exported to "*": evil's intentions do not apply as they should`)
	}
	// Exported to a name that is no peer: no chain at all.
	in.Exports[0].To = []string{"gone"}
	if fc := chainOf(t, in); fc != nil {
		t.Fatalf("a chain for a service exported to no current peer: %v", fc.Name)
	}
}
