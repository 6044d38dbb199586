package gateway

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/xds"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust/svidfile"
)

// The gateway's whole configuration comes from one ADS stream: it
// subscribes to listeners, clusters, endpoints and secrets (all of them),
// validates what arrives as Envoy would, applies what is valid, and NACKs
// the rest, keeping the previous version of that type. A config is an
// immutable view built from the latest resources of every type.

var subscribed = []string{resource.SecretType, resource.ClusterType, resource.EndpointType, resource.ListenerType}

type outCluster struct {
	name, peerTD string
	hdr          []byte // the tunnel header every stream opens with (its SNI)
	timeout      time.Duration
	pool         *pool
}

type inCluster struct {
	name    string
	timeout time.Duration
	pool    *pool
}

type chain struct {
	cluster string
	rules   *rbacconfig.RBAC
	// From the chain's metadata (xds.IngressMetadata); meta is false when
	// a server sent none, and then the RBAC rule alone decides.
	meta bool
	// peers the service is exported to: their local names by trust domain.
	peers map[string]string
	// intentions about the service, for policy.Decide.
	intentions []*apipb.Intention
}

// ingressMeta reads an ingress chain's metadata into ch; a malformed one
// is an error (the chain is then refused, never served without it).
func (ch *chain) ingressMeta(fc *listener.FilterChain) error {
	md, ok := fc.GetMetadata().GetFilterMetadata()[xds.IngressMetadata]
	if !ok {
		return nil
	}
	ch.meta, ch.peers = true, map[string]string{}
	for _, v := range md.GetFields()["peers"].GetListValue().GetValues() {
		f := v.GetStructValue().GetFields()
		name, td := f["name"].GetStringValue(), f["trust_domain"].GetStringValue()
		if name == "" || td == "" {
			return fmt.Errorf("ingress chain %s: a peer without a name or trust domain", fc.Name)
		}
		ch.peers[td] = name
	}
	for _, v := range md.GetFields()["intentions"].GetListValue().GetValues() {
		f := v.GetStructValue().GetFields()
		in := &apipb.Intention{Source: f["source"].GetStringValue(), Destination: f["destination"].GetStringValue()}
		switch f["action"].GetStringValue() {
		case "allow":
			in.Action = apipb.IntentionAction_INTENTION_ACTION_ALLOW
		case "deny":
			in.Action = apipb.IntentionAction_INTENTION_ACTION_DENY
		default:
			return fmt.Errorf("ingress chain %s: intention action %q", fc.Name, f["action"].GetStringValue())
		}
		ch.intentions = append(ch.intentions, in)
	}
	return nil
}

type egressListener struct {
	name, addr, cluster string
}

// config is one consistent view of the xDS resources.
type config struct {
	version string
	egress  map[string]egressListener // by name
	out     map[string]*outCluster
	in      map[string]*inCluster
	ingress map[string]chain               // by SNI
	bundles map[string][]*x509.Certificate // by trust domain
}

// resources holds the latest accepted resources by type and name.
type resources map[string]map[string]proto.Message

// decode unpacks and validates a response's resources.
func decode(resp *discovery.DiscoveryResponse) (map[string]proto.Message, error) {
	out := make(map[string]proto.Message, len(resp.Resources))
	for _, a := range resp.Resources {
		m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if err != nil {
			return nil, err
		}
		if err := xds.Validate(m); err != nil {
			return nil, err
		}
		var name string
		switch r := m.(type) {
		case *listener.Listener:
			name = r.Name
		case *cluster.Cluster:
			name = r.Name
		case *endpointv3.ClusterLoadAssignment:
			name = r.ClusterName
		case *tlsv3.Secret:
			name = r.Name
		default:
			return nil, fmt.Errorf("unexpected resource %T", m)
		}
		out[name] = m
	}
	return out, nil
}

// pools keeps endpoint state across configurations.
type pools map[string]*pool

func (ps pools) get(name string, c *cluster.Cluster) *pool {
	p := ps[name]
	if p == nil {
		failures, ejection, maxActive := 5, 10*time.Second, 0
		if od := c.GetOutlierDetection(); od != nil {
			if v := od.GetConsecutiveGatewayFailure(); v != nil {
				failures = int(v.Value)
			}
			if d := od.GetBaseEjectionTime(); d != nil {
				ejection = d.AsDuration()
			}
		}
		for _, th := range c.GetCircuitBreakers().GetThresholds() {
			if v := th.GetMaxConnections(); v != nil {
				maxActive = int(v.Value)
			}
		}
		p = newPool(failures, ejection, maxActive)
		ps[name] = p
	}
	return p
}

// compile builds a config from the latest resources. Unusable pieces (a
// listener naming a missing cluster) are skipped, not fatal: the rest of
// the gateway keeps working.
func compile(version string, r resources, ps pools) (*config, error) {
	c := &config{version: version, egress: map[string]egressListener{}, out: map[string]*outCluster{}, in: map[string]*inCluster{},
		ingress: map[string]chain{}, bundles: map[string][]*x509.Certificate{}}
	for name, m := range r[resource.SecretType] {
		td, ok := strings.CutPrefix(name, "bundle/")
		vc := m.(*tlsv3.Secret).GetValidationContext()
		if !ok || vc == nil {
			continue
		}
		certs, err := svidfile.ParseCerts(vc.GetTrustedCa().GetInlineBytes())
		if err != nil {
			return nil, fmt.Errorf("secret %s: %w", name, err)
		}
		c.bundles[td] = certs
	}
	live := map[string]bool{}
	for name, m := range r[resource.ClusterType] {
		cl := m.(*cluster.Cluster)
		timeout := xds.ConnectTimeout
		if d := cl.GetConnectTimeout(); d != nil {
			timeout = d.AsDuration()
		}
		p := ps.get(name, cl)
		live[name] = true
		var addrs []string
		if la, ok := r[resource.EndpointType][name].(*endpointv3.ClusterLoadAssignment); ok {
			for _, loc := range la.Endpoints {
				for _, e := range loc.LbEndpoints {
					sa := e.GetEndpoint().GetAddress().GetSocketAddress()
					if sa != nil {
						addrs = append(addrs, net.JoinHostPort(sa.Address, strconv.Itoa(int(sa.GetPortValue()))))
					}
				}
			}
		}
		p.set(addrs)
		if ts := cl.GetTransportSocket(); ts != nil {
			var up tlsv3.UpstreamTlsContext
			if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
				return nil, fmt.Errorf("cluster %s: %w", name, err)
			}
			_, _, _, td, ok := meshname.ParseSNI(up.Sni)
			if !ok {
				return nil, fmt.Errorf("cluster %s: SNI %q", name, up.Sni)
			}
			c.out[name] = &outCluster{name: name, peerTD: td, hdr: header{SNI: up.Sni}.encode(), timeout: timeout, pool: p}
		} else {
			c.in[name] = &inCluster{name: name, timeout: timeout, pool: p}
		}
	}
	for name := range ps {
		if !live[name] {
			delete(ps, name)
		}
	}
	for name, m := range r[resource.ListenerType] {
		l := m.(*listener.Listener)
		if name == meshname.IngressListener {
			for _, fc := range l.FilterChains {
				var ch chain
				for _, f := range fc.Filters {
					switch f.Name {
					case "envoy.filters.network.rbac":
						var rb rbacfilter.RBAC
						if err := f.GetTypedConfig().UnmarshalTo(&rb); err != nil {
							return nil, err
						}
						ch.rules = rb.Rules
					case "envoy.filters.network.tcp_proxy":
						var tp tcpproxy.TcpProxy
						if err := f.GetTypedConfig().UnmarshalTo(&tp); err != nil {
							return nil, err
						}
						ch.cluster = tp.GetCluster()
					}
				}
				if err := ch.ingressMeta(fc); err != nil {
					return nil, err
				}
				if ch.rules == nil || c.in[ch.cluster] == nil {
					continue // never serve a chain without its authorization
				}
				for _, sni := range fc.GetFilterChainMatch().GetServerNames() {
					c.ingress[sni] = ch
				}
			}
			continue
		}
		sa := l.GetAddress().GetSocketAddress()
		if sa == nil || len(l.FilterChains) != 1 {
			continue
		}
		var tp tcpproxy.TcpProxy
		for _, f := range l.FilterChains[0].Filters {
			if f.Name == "envoy.filters.network.tcp_proxy" {
				if err := f.GetTypedConfig().UnmarshalTo(&tp); err != nil {
					return nil, err
				}
			}
		}
		if c.out[tp.GetCluster()] == nil {
			continue
		}
		c.egress[name] = egressListener{name: name, addr: net.JoinHostPort(sa.Address, strconv.Itoa(int(sa.GetPortValue()))), cluster: tp.GetCluster()}
	}
	return c, nil
}

// runADS keeps the ADS stream open and calls apply with each new config.
func (g *Gateway) runADS(ctx context.Context, conn *grpc.ClientConn) error {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := g.adsSession(ctx, conn)
		if ctx.Err() != nil {
			return nil
		}
		g.log.Warn("xds stream ended; the gateway keeps its last configuration and reconnects", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

func (g *Gateway) adsSession(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx, grpc.MaxCallRecvMsgSize(64<<20))
	if err != nil {
		return err
	}
	node := &core.Node{Id: meshname.GatewayNodePrefix + g.cfg.Name, Cluster: "strait-gateway"}
	versions := map[string]string{}
	for _, t := range subscribed {
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
			return err
		}
	}
	// A new stream starts from the resources of the last one: until a
	// type arrives again, its last accepted version stays in force (the
	// first response of a stream carries one type only, and applying it
	// alone would drop every listener and cluster for a moment).
	first := true
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if first {
			g.m.xdsStreams.Inc()
			first = false
		}
		req := &discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}
		got, derr := decode(resp)
		if derr == nil {
			next := resources{}
			for k, v := range g.resources {
				next[k] = v
			}
			next[resp.TypeUrl] = got
			cfg, cerr := compile(resp.VersionInfo, next, g.pools)
			if derr = cerr; derr == nil {
				g.resources = next
				g.setConfig(cfg)
			}
		}
		if derr != nil {
			g.log.Warn("xds: rejected resources; keeping the previous ones", "type", resp.TypeUrl, "version", resp.VersionInfo, "err", derr)
			g.m.nacks.Inc()
			req.VersionInfo = versions[resp.TypeUrl]
			req.ErrorDetail = &status.Status{Code: 3, Message: derr.Error()}
		} else {
			versions[resp.TypeUrl] = resp.VersionInfo
			req.VersionInfo = resp.VersionInfo
		}
		if err := stream.Send(req); err != nil {
			return err
		}
	}
}
