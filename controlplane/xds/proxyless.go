package xds

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/straitmesh/strait/trust"
	"google.golang.org/protobuf/types/known/anypb"
)

// Proxyless gRPC. A grpc-go client with an xDS bootstrap naming this
// site's servers, and any node ID not starting with "gateway/", receives
// for every imported service, per port:
//
//   - an API listener named "<svc>.<ns>.<peer>.<domain>:<port>" (and, for
//     the service's first port, "<svc>.<ns>.<peer>.<domain>"), the target
//     of xds:///<name>, routing every call to
//   - cluster "proxyless/<peer>/<ns>/<svc>/<port>", whose one endpoint is
//     the service's virtual IP and port: the site's gateways carry the
//     connection to the peer without decrypting it, and
//   - mTLS from end to end, set by the cluster's UpstreamTlsContext: the
//     client presents its own SVID and accepts only the service's
//     (spiffe://<peer td>/ns/<ns>/svc/<svc>), both through the certificate
//     provider instance ProxylessCertProvider of the client's bootstrap.

// ProxylessGroup is the snapshot every proxyless client receives.
const ProxylessGroup = "proxyless"

// ProxylessCertProvider names the certificate provider instance a
// proxyless client's bootstrap must define (for example grpc-go's
// file_watcher, over the SVID and bundle files the agent keeps).
const ProxylessCertProvider = "strait"

// DefaultDomain is the mesh domain when Inputs.Domain is empty.
const DefaultDomain = "mesh"

// BuildProxyless generates and validates the proxyless clients' resources.
func BuildProxyless(in Inputs) (Resources, error) {
	r := Resources{}
	add := func(t resource.Type, m types.Resource) { r[t] = append(r[t], m) }
	domain := strings.TrimSuffix(in.Domain, ".")
	if domain == "" {
		domain = DefaultDomain
	}
	for _, ip := range importedPorts(in) {
		p, def := ip.peer, ip.svc
		td, err := spiffeid.TrustDomainFromString(p.TrustDomain)
		if err != nil {
			return nil, fmt.Errorf("peer %s: %w", p.Name, err)
		}
		id, err := trust.WorkloadID(td, def.Namespace, def.Name)
		if err != nil {
			return nil, err
		}
		name := "proxyless/" + p.Name + "/" + def.Namespace + "/" + def.Name + "/" + ip.port.Name
		c, err := proxylessCluster(name, id.String())
		if err != nil {
			return nil, err
		}
		add(resource.ClusterType, c)
		add(resource.EndpointType, loadAssignment(name, []string{net.JoinHostPort(ip.vip.String(), strconv.Itoa(int(ip.num)))}))
		host := fmt.Sprintf("%s.%s.%s.%s", def.Name, def.Namespace, p.Name, domain)
		targets := []string{host + ":" + strconv.Itoa(int(ip.num))}
		if ip.first {
			targets = append(targets, host)
		}
		for _, t := range targets {
			l, err := apiListener(t, name)
			if err != nil {
				return nil, err
			}
			add(resource.ListenerType, l)
		}
	}
	if err := r.sortAndValidate(); err != nil {
		return nil, err
	}
	return r, nil
}

// apiListener routes every call to target to cluster.
func apiListener(target, cluster string) (*listener.Listener, error) {
	rtr, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, err
	}
	m := &hcm.HttpConnectionManager{
		StatPrefix: "proxyless",
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: target,
			VirtualHosts: []*route.VirtualHost{{
				Name:    target,
				Domains: []string{"*"},
				Routes: []*route.Route{{
					Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
					Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: cluster}}},
				}},
			}},
		}},
		HttpFilters: []*hcm.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: rtr}}},
	}
	a, err := anypb.New(m)
	if err != nil {
		return nil, err
	}
	return &listener.Listener{Name: target, ApiListener: &listener.ApiListener{ApiListener: a}}, nil
}

// proxylessCluster is an EDS cluster reached over mTLS with the client's
// own SVID, accepting only the service's.
func proxylessCluster(name, serviceID string) (*cluster.Cluster, error) {
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
	provider := func() *tlsv3.CertificateProviderPluginInstance {
		return &tlsv3.CertificateProviderPluginInstance{InstanceName: ProxylessCertProvider, CertificateName: "default"}
	}
	tlsCtx := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: provider(),
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: provider(),
			// Both forms: Envoy reads the typed one; grpc-go (1.85) only the
			// deprecated one, and would accept any SVID of the bundle
			// without it.
			MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_URI,
				Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: serviceID}}}},
			MatchSubjectAltNames: []*matcher.StringMatcher{{MatchPattern: &matcher.StringMatcher_Exact{Exact: serviceID}}}, //lint:ignore SA1019 grpc-go reads only this field
		}},
	}}
	a, err := anypb.New(tlsCtx)
	if err != nil {
		return nil, err
	}
	c.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: a}}
	return c, nil
}
