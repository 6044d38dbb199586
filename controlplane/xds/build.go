// Package xds is the xDS server every strait server runs: it turns the
// replicated state (catalog, imports with their virtual IPs, exports,
// intentions, peers and bundles) into Envoy resources for the site's
// gateways, and serves them over ADS (envoyproxy/go-control-plane) on the
// server's mTLS port. The resources are plain Envoy configuration, so
// Envoy can be the data plane as well as `strait gateway`.
//
// For a gateway (node ID "gateway/<name>"), per meshname's naming:
//   - a secret bundle/<td> (validation context) for this site and each peer;
//   - per imported service and port: a listener on the virtual IP and the
//     port its instances use, TCP-proxying to cluster out/<peer>/<ns>/<svc>/<port>,
//     whose endpoints are the peer's gateways, reached over mTLS with SNI
//     <port>.<svc>.<ns>.<peer td>;
//   - per exported local service and port: cluster in/<ns>/<svc>/<port>
//     (its passing instances) and, on listener "ingress", a filter chain for
//     its SNI: mTLS requiring a certificate of a peer the service is
//     exported to, an RBAC filter compiled from the intentions whose
//     principals are only of those peers' trust domains, and a TCP proxy
//     to the cluster. The chain's metadata (IngressMetadata) names the
//     service, the peers it is exported to and the intentions about it,
//     so that strait gateway can name the intention behind a decision.
package xds

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/policy"
)

// Defaults of generated clusters.
const (
	ConnectTimeout = 5 * time.Second
	// MaxConnections per cluster (circuit breaker).
	MaxConnections = 10000
	// Outlier ejection: after this many consecutive failures to connect,
	// an endpoint is ejected for EjectionTime.
	ConsecutiveFailures = 3
	EjectionTime        = 10 * time.Second
	// IngressPort is where Envoy gateways listen for peers (strait
	// gateway binds its --wan-addr instead).
	IngressPort = 8443
)

// Peer is a federated site as the gateways need it.
type Peer struct {
	Name, TrustDomain string
	CAs               []*x509.Certificate
	Gateways          []string
}

// Service is a service with its passing instances.
type Service struct {
	Def       *apipb.Service
	Instances []*apipb.Instance
	// To are the peers (local names, or "*" for every peer) an exported
	// service is exported to; only their gateways may reach it.
	To []string
}

// Inputs is everything the gateway resources are built from.
type Inputs struct {
	TrustDomain string
	// Domain is the mesh DNS domain ("mesh" when empty): proxyless
	// clients' targets are names in it.
	Domain string
	CAs    []*x509.Certificate
	Peers  []Peer
	// Imported services (Def.Peer set) and exported local services.
	Imports, Exports []Service
	Intentions       []*apipb.Intention
}

// Resources are the generated resources by type URL.
type Resources map[resource.Type][]types.Resource

// Build generates and validates the gateway resources.
func Build(in Inputs) (Resources, error) {
	r := Resources{}
	add := func(t resource.Type, m types.Resource) { r[t] = append(r[t], m) }
	for _, p := range in.Peers {
		add(resource.SecretType, bundleSecret(p.TrustDomain, p.CAs))
	}
	add(resource.SecretType, bundleSecret(in.TrustDomain, in.CAs))

	// Egress: imported services, on their virtual IPs.
	for _, ip := range importedPorts(in) {
		p, def := ip.peer, ip.svc
		name := meshname.OutCluster(p.Name, def.Namespace, def.Name, ip.port.Name)
		sni := meshname.SNI(ip.port.Name, def.Name, def.Namespace, p.TrustDomain)
		c, err := outCluster(name, sni, p.TrustDomain)
		if err != nil {
			return nil, err
		}
		add(resource.ClusterType, c)
		add(resource.EndpointType, loadAssignment(name, p.Gateways))
		l, err := egressListener(name, ip.vip, ip.num)
		if err != nil {
			return nil, err
		}
		add(resource.ListenerType, l)
	}

	// Ingress: exported local services, authorized by intentions.
	ingress := &listener.Listener{
		Name:    meshname.IngressListener,
		Address: socketAddress("0.0.0.0", IngressPort),
	}
	for _, s := range in.Exports {
		to := exportedTo(in.Peers, s.To)
		if len(to) == 0 {
			continue // no peer could connect
		}
		for _, port := range s.Def.Ports {
			name := meshname.InCluster(s.Def.Namespace, s.Def.Name, port.Name)
			var addrs []string
			for _, i := range s.Instances {
				if n, ok := i.Ports[port.Name]; ok {
					addrs = append(addrs, net.JoinHostPort(i.Address, strconv.Itoa(int(n))))
				}
			}
			add(resource.ClusterType, inCluster(name))
			add(resource.EndpointType, loadAssignment(name, addrs))
			fc, err := ingressChain(in, to, s.Def, port.Name, name)
			if err != nil {
				return nil, err
			}
			ingress.FilterChains = append(ingress.FilterChains, fc)
		}
	}
	if len(ingress.FilterChains) > 0 {
		add(resource.ListenerType, ingress) // Envoy refuses a listener without chains
	}
	if err := r.sortAndValidate(); err != nil {
		return nil, err
	}
	return r, nil
}

// sortAndValidate orders each type's resources by name and validates them.
func (r Resources) sortAndValidate() error {
	for t, list := range r {
		sort.Slice(list, func(i, j int) bool { return resourceName(list[i]) < resourceName(list[j]) })
		for _, m := range list {
			if err := Validate(m); err != nil {
				return fmt.Errorf("generated %s %q is invalid: %w", t, resourceName(m), err)
			}
		}
	}
	return nil
}

func resourceName(m types.Resource) string {
	type named interface{ GetName() string }
	if n, ok := m.(named); ok {
		return n.GetName()
	}
	if c, ok := m.(*endpoint.ClusterLoadAssignment); ok {
		return c.ClusterName
	}
	return ""
}

// importedPort is a port of an imported service served at its virtual IP.
type importedPort struct {
	peer  Peer
	svc   *apipb.Service
	port  *apipb.ServicePort
	vip   netip.Addr
	num   uint32 // the port number at the virtual IP
	first bool   // the service's first such port, by name
}

// importedPorts lists the ports of imports that have a known peer, a
// virtual IP and instances using the port, by service then port name:
// what both gateways and proxyless clients are configured for.
func importedPorts(in Inputs) []importedPort {
	peers := make(map[string]Peer, len(in.Peers))
	for _, p := range in.Peers {
		peers[p.Name] = p
	}
	var out []importedPort
	for _, s := range in.Imports {
		p, ok := peers[s.Def.Peer]
		vip, err := netip.ParseAddr(s.Def.VirtualIp)
		if !ok || err != nil || len(s.Instances) == 0 {
			continue
		}
		ports := slices.Clone(s.Def.Ports)
		sort.Slice(ports, func(i, j int) bool { return ports[i].Name < ports[j].Name })
		first := true
		for _, port := range ports {
			if num := virtualPort(s.Instances, port.Name); num != 0 {
				out = append(out, importedPort{peer: p, svc: s.Def, port: port, vip: vip, num: num, first: first})
				first = false
			}
		}
	}
	return out
}

// virtualPort is the port an imported service's port name is served on at
// its virtual IP: the one its instances use (the lowest when they differ),
// as mesh DNS announces in SRV records.
func virtualPort(insts []*apipb.Instance, name string) uint32 {
	var p uint32
	for _, in := range insts {
		if n, ok := in.Ports[name]; ok && (p == 0 || n < p) {
			p = n
		}
	}
	return p
}

func pemBytes(certs []*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func bundleSecret(td string, cas []*x509.Certificate) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: meshname.BundleSecret(td),
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: pemBytes(cas)}},
		}},
	}
}

func socketAddress(host string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

func sdsConfig(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}}
}

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3, ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}
}

// gatewaySAN matches the certificates of td's gateways.
func gatewaySAN(td string) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI,
		Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "spiffe://" + td + "/strait/gateway/"}}}
}

func baseCluster(name string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(ConnectTimeout),
		LbPolicy:             cluster.Cluster_LEAST_REQUEST,
		CircuitBreakers: &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
			MaxConnections: wrapperspb.UInt32(MaxConnections),
		}}},
		OutlierDetection: &cluster.OutlierDetection{
			ConsecutiveGatewayFailure:          wrapperspb.UInt32(ConsecutiveFailures),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
			BaseEjectionTime:                   durationpb.New(EjectionTime),
		},
	}
}

func outCluster(name, sni, peerTD string) (*cluster.Cluster, error) {
	c := baseCluster(name)
	tlsCtx := &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols: []string{meshname.TunnelALPN},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{gatewaySAN(peerTD)}},
				ValidationContextSdsSecretConfig: sdsConfig(meshname.BundleSecret(peerTD)),
			}},
		},
	}
	a, err := anypb.New(tlsCtx)
	if err != nil {
		return nil, err
	}
	c.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: a}}
	return c, nil
}

func inCluster(name string) *cluster.Cluster { return baseCluster(name) }

func loadAssignment(name string, addrs []string) *endpoint.ClusterLoadAssignment {
	// One locality, named and weighted: grpc-go refuses a locality
	// without an ID.
	la := &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
		Locality: &core.Locality{Region: "strait"}, LoadBalancingWeight: wrapperspb.UInt32(1)}}}
	sort.Strings(addrs)
	for _, a := range addrs {
		host, portS, err := net.SplitHostPort(a)
		if err != nil {
			continue
		}
		port, err := strconv.Atoi(portS)
		if err != nil || port < 1 || port > 65535 {
			continue
		}
		la.Endpoints[0].LbEndpoints = append(la.Endpoints[0].LbEndpoints, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(host, uint32(port))}},
		})
	}
	return la
}

func typed(name string, m proto.Message) (*listener.Filter, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, err
	}
	return &listener.Filter{Name: name, ConfigType: &listener.Filter_TypedConfig{TypedConfig: a}}, nil
}

func egressListener(clusterName string, vip netip.Addr, port uint32) (*listener.Listener, error) {
	tp, err := typed("envoy.filters.network.tcp_proxy", &tcpproxy.TcpProxy{
		StatPrefix:       clusterName,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: clusterName},
	})
	if err != nil {
		return nil, err
	}
	return &listener.Listener{
		Name:         clusterName,
		Address:      socketAddress(vip.String(), port),
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{tp}}},
	}, nil
}

// exportedTo are the peers of peers an export's list (names, or "*")
// names, by name.
func exportedTo(peers []Peer, list []string) map[string]Peer {
	out := map[string]Peer{}
	for _, p := range peers {
		if slices.Contains(list, p.Name) || slices.Contains(list, "*") {
			out[p.Name] = p
		}
	}
	return out
}

func ingressChain(in Inputs, to map[string]Peer, svc *apipb.Service, port, clusterName string) (*listener.FilterChain, error) {
	// The gateways of the peers the service is exported to present their
	// SVIDs: each is verified against its own trust domain's bundle
	// (Envoy's SPIFFE validator; bundles are never merged), and must name
	// a gateway; RBAC then holds each source to the intentions, with
	// principals of those peers' trust domains only.
	var sans []*tlsv3.SubjectAltNameMatcher
	spiffe := &tlsv3.SPIFFECertValidatorConfig{}
	names := slices.Sorted(maps.Keys(to))
	for _, name := range names {
		p := to[name]
		sans = append(sans, gatewaySAN(p.TrustDomain))
		spiffe.TrustDomains = append(spiffe.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name: p.TrustDomain, TrustBundle: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: pemBytes(p.CAs)}},
		})
	}
	validator, err := anypb.New(spiffe)
	if err != nil {
		return nil, err
	}
	tlsCtx := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols: []string{meshname.TunnelALPN},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				MatchTypedSubjectAltNames: sans,
				CustomValidatorConfig:     &core.TypedExtensionConfig{Name: "envoy.tls.cert_validator.spiffe", TypedConfig: validator},
			}},
		},
	}
	ts, err := anypb.New(tlsCtx)
	if err != nil {
		return nil, err
	}
	rbac, err := typed("envoy.filters.network.rbac", &rbacfilter.RBAC{
		StatPrefix: clusterName,
		Rules:      CompileIntentions(in.Intentions, to, svc.Namespace, svc.Name),
	})
	if err != nil {
		return nil, err
	}
	tp, err := typed("envoy.filters.network.tcp_proxy", &tcpproxy.TcpProxy{
		StatPrefix:       clusterName,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: clusterName},
	})
	if err != nil {
		return nil, err
	}
	md, err := ingressMetadata(in.Intentions, to, names, svc.Namespace, svc.Name)
	if err != nil {
		return nil, err
	}
	return &listener.FilterChain{
		Name:             clusterName,
		FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{meshname.SNI(port, svc.Name, svc.Namespace, in.TrustDomain)}},
		TransportSocket:  &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: ts}},
		Filters:          []*listener.Filter{rbac, tp},
		Metadata:         &core.Metadata{FilterMetadata: map[string]*structpb.Struct{IngressMetadata: md}},
	}, nil
}

// IngressMetadata is the filter metadata namespace of an ingress chain's
// metadata: "service" ("ns/svc"), "peers" (the peers the service is
// exported to: objects with "name" and "trust_domain") and "intentions"
// (those about the service whose source is one of those peers: objects
// with "source", "destination" and "action", "allow" or "deny"). Envoy
// ignores it; strait gateway evaluates the intentions with policy.Decide,
// as `strait intention check` does, to name the one that decided.
const IngressMetadata = "strait.ingress"

func ingressMetadata(all []*apipb.Intention, to map[string]Peer, names []string, ns, svc string) (*structpb.Struct, error) {
	var peers, intentions []any
	for _, name := range names {
		peers = append(peers, map[string]any{"name": name, "trust_domain": to[name].TrustDomain})
	}
	for _, in := range all {
		dns, dsvc, err := policy.ParseDestination(in.Destination)
		if err != nil || dns != ns || (dsvc != "*" && dsvc != svc) {
			continue
		}
		site, _, _, err := policy.ParseSource(in.Source)
		if _, ok := to[site]; err != nil || !ok {
			continue
		}
		action := "deny"
		if in.Action == apipb.IntentionAction_INTENTION_ACTION_ALLOW {
			action = "allow"
		}
		intentions = append(intentions, map[string]any{"source": in.Source, "destination": in.Destination, "action": action})
	}
	return structpb.NewStruct(map[string]any{"service": ns + "/" + svc, "peers": peers, "intentions": intentions})
}

// CompileIntentions turns the intentions about ns/svc into an RBAC ALLOW
// rule over SPIFFE IDs, for sources of peers only (an intention naming
// any other site compiles to nothing: pass the peers the service is
// exported to, and only their trust domains can match). An allow of a
// source site/ns/svc is the workload ID spiffe://<peer td>/ns/<ns>/svc/<svc>
// (a prefix for wildcards); a deny naming a source namespace or service
// is that ID or any of the peer's infrastructure IDs (spiffe://<peer
// td>/strait/...: its gateways, which carry connections for the whole
// site: fail-closed, see policy). Each allow
// subtracts the denies at least as specific, so the most specific
// intention wins as policy.Decide says; what no allow matches is denied.
func CompileIntentions(all []*apipb.Intention, peers map[string]Peer, ns, svc string) *rbacconfig.RBAC {
	type compiled struct {
		p     *rbacconfig.Principal
		score int
		allow bool
	}
	var list []compiled
	for _, in := range all {
		dns, dsvc, err := policy.ParseDestination(in.Destination)
		if err != nil || dns != ns || (dsvc != "*" && dsvc != svc) {
			continue
		}
		site, sns, ssvc, err := policy.ParseSource(in.Source)
		p, ok := peers[site]
		if err != nil || !ok {
			continue // a source that is not a peer can never connect
		}
		prefix := "spiffe://" + p.TrustDomain + "/"
		m := &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: prefix}}
		score := 0
		if dsvc != "*" {
			score += 8
		}
		allow := in.Action == apipb.IntentionAction_INTENTION_ACTION_ALLOW
		switch {
		case sns != "*" && ssvc != "*":
			score += 3
		case sns != "*":
			score += 2
		}
		switch {
		case sns != "*" && ssvc != "*":
			m = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: prefix + "ns/" + sns + "/svc/" + ssvc}}
		case sns != "*":
			m = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: prefix + "ns/" + sns + "/svc/"}}
		}
		pr := &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Authenticated_{Authenticated: &rbacconfig.Principal_Authenticated{PrincipalName: m}}}
		if !allow && sns != "*" {
			// A gateway's ID says nothing of the workload behind it: a
			// deny naming a source namespace or service also matches the
			// peer's infrastructure IDs (fail-closed, as policy.Decide),
			// while an allow naming one matches only that workload's ID,
			// which a gateway never presents.
			infra := &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: prefix + "strait/"}}
			pr = &rbacconfig.Principal{Identifier: &rbacconfig.Principal_OrIds{OrIds: &rbacconfig.Principal_Set{Ids: []*rbacconfig.Principal{pr,
				{Identifier: &rbacconfig.Principal_Authenticated_{Authenticated: &rbacconfig.Principal_Authenticated{PrincipalName: infra}}}}}}}
		}
		list = append(list, compiled{p: pr, score: score, allow: allow})
	}
	var principals []*rbacconfig.Principal
	for _, a := range list {
		if !a.allow {
			continue
		}
		ids := []*rbacconfig.Principal{a.p}
		for _, d := range list {
			if !d.allow && d.score >= a.score {
				ids = append(ids, &rbacconfig.Principal{Identifier: &rbacconfig.Principal_NotId{NotId: d.p}})
			}
		}
		if len(ids) == 1 {
			principals = append(principals, a.p)
		} else {
			principals = append(principals, &rbacconfig.Principal{Identifier: &rbacconfig.Principal_AndIds{AndIds: &rbacconfig.Principal_Set{Ids: ids}}})
		}
	}
	rules := &rbacconfig.RBAC{Action: rbacconfig.RBAC_ALLOW, Policies: map[string]*rbacconfig.Policy{}}
	if len(principals) > 0 {
		rules.Policies["intentions"] = &rbacconfig.Policy{
			Permissions: []*rbacconfig.Permission{{Rule: &rbacconfig.Permission_Any{Any: true}}},
			Principals:  principals,
		}
	}
	return rules
}
