package xds_test

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/xds"
	"github.com/straitmesh/strait/internal/golden"
)

var update = flag.Bool("update", false, "rewrite testdata/golden from the current output")

// goldenCAs are the CA certificates of the golden inputs, one per trust
// domain (their key material is random; renderResources redacts it).
var goldenCAs = struct {
	sync.Mutex
	m map[string]*x509.Certificate
}{m: map[string]*x509.Certificate{}}

func goldenCA(t *testing.T, td string) []*x509.Certificate {
	goldenCAs.Lock()
	defer goldenCAs.Unlock()
	if c, ok := goldenCAs.m[td]; ok {
		return []*x509.Certificate{c}
	}
	c := caCert(t, td)
	goldenCAs.m[td] = c
	return []*x509.Certificate{c}
}

// TestGoldenResources renders every resource Build (a gateway's) and
// BuildProxyless (a proxyless client's) make for representative inputs,
// and compares them with testdata/golden/<case>.json. Regenerate with
// `make golden` and review the diff: a change there is a change of what
// every gateway and client of a site is configured with.
func TestGoldenResources(t *testing.T) {
	httpPort := []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}
	inst := func(addr string, ports map[string]uint32) *apipb.Instance {
		return &apipb.Instance{Address: addr, Ports: ports}
	}
	allow := apipb.IntentionAction_INTENTION_ACTION_ALLOW
	deny := apipb.IntentionAction_INTENTION_ACTION_DENY
	site := func(t *testing.T) xds.Inputs {
		return xds.Inputs{TrustDomain: "aws-east.strait", CAs: goldenCA(t, "aws-east.strait")}
	}
	peer := func(t *testing.T, name string, gateways ...string) xds.Peer {
		return xds.Peer{Name: name, TrustDomain: name + ".strait", CAs: goldenCA(t, name+".strait"), Gateways: gateways}
	}
	tests := []struct {
		name string
		in   func(t *testing.T) xds.Inputs
	}{{
		// Nothing imported or exported: only the site's own bundle.
		name: "01.empty-site",
		in:   site,
	}, {
		// A local service exported to a peer and allowed from all of it:
		// cluster in/..., its instances, the ingress listener's chain.
		name: "02.local-service-exported",
		in: func(t *testing.T) xds.Inputs {
			in := site(t)
			in.Peers = []xds.Peer{peer(t, "gcp-west", "192.0.2.1:8443")}
			in.Exports = []xds.Service{{Def: &apipb.Service{Namespace: "web", Name: "front", Ports: httpPort},
				Instances: []*apipb.Instance{inst("10.0.0.2", map[string]uint32{"http": 80}), inst("10.0.0.1", map[string]uint32{"http": 80})},
				To:        []string{"gcp-west"}}}
			in.Intentions = []*apipb.Intention{{Source: "gcp-west", Destination: "web/front", Action: allow}}
			return in
		},
	}, {
		// An imported service on its virtual IP, behind the peer's two
		// gateways: per port, an egress listener at the lowest port its
		// instances use, cluster out/... over mTLS with the port's SNI,
		// the gateways as endpoints; and the proxyless resources for it.
		name: "03.imported-service-virtual-ip",
		in: func(t *testing.T) xds.Inputs {
			in := site(t)
			in.Peers = []xds.Peer{peer(t, "gcp-west", "192.0.2.2:8443", "192.0.2.1:8443")}
			in.Imports = []xds.Service{{
				Def: &apipb.Service{Peer: "gcp-west", Namespace: "payments", Name: "api", VirtualIp: "127.240.0.1", Ports: []*apipb.ServicePort{
					{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}, {Name: "admin", Protocol: apipb.Protocol_PROTOCOL_TCP}}},
				Instances: []*apipb.Instance{inst("10.8.0.1", map[string]uint32{"http": 9090, "admin": 9901}), inst("10.8.0.2", map[string]uint32{"http": 8080})},
			}}
			return in
		},
	}, {
		// The ingress of a service with intentions that allow and deny:
		// the RBAC rule subtracts the denies at least as specific as each
		// allow, a deny naming a namespace also denies the peer's
		// gateways, and an intention of a site that is no peer is left out.
		name: "04.ingress-intentions-allow-deny",
		in: func(t *testing.T) xds.Inputs {
			in := site(t)
			in.Peers = []xds.Peer{peer(t, "gcp-west", "192.0.2.1:8443")}
			in.Exports = []xds.Service{{Def: &apipb.Service{Namespace: "payments", Name: "api", Ports: httpPort},
				Instances: []*apipb.Instance{inst("10.0.0.5", map[string]uint32{"http": 8080})}, To: []string{"gcp-west"}}}
			in.Intentions = []*apipb.Intention{
				{Source: "gcp-west/*/*", Destination: "payments/*", Action: allow},
				{Source: "gcp-west/batch/*", Destination: "payments/api", Action: deny},
				{Source: "gcp-west/web/front", Destination: "payments/api", Action: allow},
				{Source: "gcp-west/web/legacy", Destination: "payments/api", Action: deny},
				{Source: "azure-north/*/*", Destination: "payments/api", Action: allow},
				{Source: "gcp-west/*/*", Destination: "ledger/*", Action: allow},
			}
			return in
		},
	}, {
		// Several exported services and ports: one chain per SNI on the
		// ingress listener (the gateway passes the TLS through by SNI to
		// the matching cluster), one exported to every peer ("*"), one to
		// nobody who is a peer (no chain).
		name: "05.sni-routes",
		in: func(t *testing.T) xds.Inputs {
			in := site(t)
			in.Peers = []xds.Peer{peer(t, "gcp-west", "192.0.2.1:8443"), peer(t, "onprem", "198.51.100.7:8443")}
			in.Exports = []xds.Service{
				{Def: &apipb.Service{Namespace: "payments", Name: "api", Ports: []*apipb.ServicePort{
					{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}, {Name: "grpc", Protocol: apipb.Protocol_PROTOCOL_GRPC}}},
					Instances: []*apipb.Instance{inst("10.0.0.5", map[string]uint32{"http": 8080, "grpc": 9090}), inst("10.0.0.6", map[string]uint32{"http": 8080})},
					To:        []string{"*"}},
				{Def: &apipb.Service{Namespace: "db", Name: "postgres", Ports: []*apipb.ServicePort{{Name: "tcp", Protocol: apipb.Protocol_PROTOCOL_TCP}}},
					Instances: []*apipb.Instance{inst("10.0.1.9", map[string]uint32{"tcp": 5432})}, To: []string{"onprem"}},
				{Def: &apipb.Service{Namespace: "db", Name: "redis", Ports: []*apipb.ServicePort{{Name: "tcp", Protocol: apipb.Protocol_PROTOCOL_TCP}}},
					Instances: []*apipb.Instance{inst("10.0.1.10", map[string]uint32{"tcp": 6379})}, To: []string{"gone"}},
			}
			in.Intentions = []*apipb.Intention{
				{Source: "gcp-west", Destination: "payments/api", Action: allow},
				{Source: "onprem/ops/*", Destination: "db/*", Action: allow},
			}
			return in
		},
	}, {
		// Proxyless gRPC clients: per imported port an API listener (and
		// the bare name for the first port by name), a cluster to the
		// virtual IP over end-to-end mTLS, its endpoint. The mesh domain
		// is given with a trailing dot; an import without instances and
		// one without a virtual IP get nothing.
		name: "06.proxyless-grpc",
		in: func(t *testing.T) xds.Inputs {
			in := site(t)
			in.Domain = "corp.mesh."
			in.Peers = []xds.Peer{peer(t, "gcp-west", "192.0.2.1:8443")}
			in.Imports = []xds.Service{
				{Def: &apipb.Service{Peer: "gcp-west", Namespace: "payments", Name: "ledger", VirtualIp: "127.240.0.7", Ports: []*apipb.ServicePort{
					{Name: "grpc", Protocol: apipb.Protocol_PROTOCOL_GRPC}, {Name: "admin", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
					Instances: []*apipb.Instance{inst("10.8.0.3", map[string]uint32{"grpc": 50051, "admin": 8081})}},
				{Def: &apipb.Service{Peer: "gcp-west", Namespace: "payments", Name: "idle", VirtualIp: "127.240.0.8", Ports: httpPort}},
				{Def: &apipb.Service{Peer: "gcp-west", Namespace: "payments", Name: "novip", Ports: httpPort},
					Instances: []*apipb.Instance{inst("10.8.0.4", map[string]uint32{"http": 80})}},
			}
			return in
		},
	}, {
		// Three peers: imports from two of them (one import naming a peer
		// that is gone), exports to different sets, intentions of each;
		// every bundle is its own secret and each chain admits only the
		// trust domains it is exported to.
		name: "07.multiple-peers",
		in: func(t *testing.T) xds.Inputs {
			in := site(t)
			in.Peers = []xds.Peer{
				peer(t, "gcp-west", "192.0.2.1:8443"),
				peer(t, "onprem", "198.51.100.7:8443", "198.51.100.8:8443"),
				peer(t, "azure-north", "203.0.113.4:8443"),
			}
			in.Imports = []xds.Service{
				{Def: &apipb.Service{Peer: "gcp-west", Namespace: "payments", Name: "api", VirtualIp: "127.240.0.1", Ports: httpPort},
					Instances: []*apipb.Instance{inst("10.8.0.1", map[string]uint32{"http": 8080})}},
				{Def: &apipb.Service{Peer: "onprem", Namespace: "db", Name: "postgres", VirtualIp: "127.240.0.2", Ports: []*apipb.ServicePort{{Name: "tcp", Protocol: apipb.Protocol_PROTOCOL_TCP}}},
					Instances: []*apipb.Instance{inst("172.16.0.9", map[string]uint32{"tcp": 5432})}},
				{Def: &apipb.Service{Peer: "retired", Namespace: "old", Name: "svc", VirtualIp: "127.240.0.3", Ports: httpPort},
					Instances: []*apipb.Instance{inst("10.9.0.1", map[string]uint32{"http": 80})}},
			}
			in.Exports = []xds.Service{
				{Def: &apipb.Service{Namespace: "web", Name: "front", Ports: httpPort},
					Instances: []*apipb.Instance{inst("10.0.0.1", map[string]uint32{"http": 80})}, To: []string{"gcp-west", "azure-north"}},
				{Def: &apipb.Service{Namespace: "web", Name: "static", Ports: httpPort},
					Instances: []*apipb.Instance{inst("10.0.0.3", map[string]uint32{"http": 80})}, To: []string{"onprem"}},
			}
			in.Intentions = []*apipb.Intention{
				{Source: "gcp-west", Destination: "web/*", Action: allow},
				{Source: "azure-north/shop/*", Destination: "web/front", Action: allow},
				{Source: "azure-north/shop/cart", Destination: "web/front", Action: deny},
				{Source: "onprem", Destination: "web/front", Action: allow},
				{Source: "onprem/*/*", Destination: "web/static", Action: allow},
			}
			return in
		},
	}}
	var used []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join("testdata", "golden", tt.name+".json")
			used = append(used, path)
			in := tt.in(t)
			gw, err := xds.Build(in)
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			pl, err := xds.BuildProxyless(in)
			if err != nil {
				t.Fatalf("build proxyless: %v", err)
			}
			doc := map[string]any{"gateway": renderResources(t, gw), "proxyless": renderResources(t, pl)}
			golden.Check(t, path, marshalIndent(t, doc), *update)
		})
	}
	if len(used) == len(tests) { // every case ran: no -run selected some
		golden.CheckUnused(t, filepath.Join("testdata", "golden"), used, *update)
	}
}

// resourceKeys name the resource types in the golden files.
var resourceKeys = map[string]string{
	resource.ListenerType: "listeners",
	resource.RouteType:    "routes",
	resource.ClusterType:  "clusters",
	resource.EndpointType: "endpoints",
	resource.SecretType:   "secrets",
}

// renderResources is res as a JSON object: per resource type (by its
// key in resourceKeys, else its type URL), the resources in the order
// the builder gives them, each in the proto3 JSON mapping with proto
// field names, certificates redacted (redactPEM).
func renderResources(t *testing.T, res xds.Resources) map[string]any {
	t.Helper()
	out := map[string]any{}
	for typ, list := range res {
		key := resourceKeys[typ]
		if key == "" {
			key = typ
		}
		var items []any
		for _, m := range list {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
			if err != nil {
				t.Fatalf("marshal %s: %v", typ, err)
			}
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.UseNumber()
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Fatalf("decode %s: %v", typ, err)
			}
			items = append(items, redactPEM(t, v))
		}
		out[key] = items
	}
	return out
}

// redactPEM replaces every inline_bytes value (a data source: the CA
// certificates of a bundle, inline) with what it holds, such as
// "PEM: CERTIFICATE spiffe://gcp-west.strait": the certificates' keys,
// serials and validity change on every run, the trust domain they are
// of does not.
func redactPEM(t *testing.T, v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := e.(string); ok && k == "inline_bytes" {
				v[k] = describePEM(t, s)
				continue
			}
			v[k] = redactPEM(t, e)
		}
	case []any:
		for i, e := range v {
			v[i] = redactPEM(t, e)
		}
	}
	return v
}

func describePEM(t *testing.T, b64 string) string {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatalf("inline_bytes is not base64: %v", err)
	}
	var what []string
	for {
		var blk *pem.Block
		blk, raw = pem.Decode(raw)
		if blk == nil {
			break
		}
		desc := blk.Type
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatalf("inline certificate: %v", err)
			}
			for _, u := range c.URIs {
				desc += " " + u.String()
			}
		}
		what = append(what, desc)
	}
	if len(bytes.TrimSpace(raw)) > 0 || len(what) == 0 {
		return fmt.Sprintf("%d bytes (not PEM)", len(raw))
	}
	slices.Sort(what)
	return "PEM: " + strings.Join(what, ", ")
}

// marshalIndent is v as indented JSON with sorted object keys and no
// HTML escaping.
func marshalIndent(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
