// Package trust is the root of a site's identity machinery: the site CA
// (trust/ca), sealing of CA keys at rest (trust/keywrap) and the mTLS
// configurations built from SPIFFE identities (trust/mtls).
//
// Every site is its own SPIFFE trust domain. Identities follow the
// contracts in docs/architecture.md: workloads spiffe://<td>/ns/<ns>/svc/<svc>,
// servers spiffe://<td>/strait/server/<node>, gateways
// spiffe://<td>/strait/gateway/<name>, agents spiffe://<td>/strait/agent/<node>.
package trust

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServerID is the SPIFFE ID of the server named node in td.
func ServerID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "strait", "server", node)
}

// AgentID is the SPIFFE ID of the agent named node in td.
func AgentID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "strait", "agent", node)
}

// BundleEndpointID is the SPIFFE ID every server of td presents on its
// SPIFFE bundle endpoint (https_spiffe profile).
func BundleEndpointID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "strait", "bundle-endpoint")
}

// WorkloadID is the SPIFFE ID of a service in a namespace of td.
func WorkloadID(td spiffeid.TrustDomain, namespace, service string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "ns", namespace, "svc", service)
}

// WorkloadService returns the namespace and service a workload ID of td
// names.
func WorkloadService(id spiffeid.ID, td spiffeid.TrustDomain) (namespace, service string, ok bool) {
	if id.TrustDomain() != td {
		return "", "", false
	}
	parts := strings.Split(id.Path(), "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "svc" || parts[2] == "" || parts[4] == "" {
		return "", "", false
	}
	return parts[2], parts[4], true
}

// IsServer reports whether id names a server of td.
func IsServer(id spiffeid.ID, td spiffeid.TrustDomain) bool {
	_, ok := ServerNode(id, td)
	return ok
}

// ServerNode returns the node name of a server ID of td.
func ServerNode(id spiffeid.ID, td spiffeid.TrustDomain) (string, bool) {
	return infraNode(id, td, "/strait/server/")
}

// AgentNode returns the node name of an agent ID of td.
func AgentNode(id spiffeid.ID, td spiffeid.TrustDomain) (string, bool) {
	return infraNode(id, td, "/strait/agent/")
}

func infraNode(id spiffeid.ID, td spiffeid.TrustDomain, prefix string) (string, bool) {
	if id.TrustDomain() != td {
		return "", false
	}
	p := id.Path()
	if len(p) <= len(prefix) || p[:len(prefix)] != prefix {
		return "", false
	}
	node := p[len(prefix):]
	for i := 0; i < len(node); i++ {
		if node[i] == '/' {
			return "", false
		}
	}
	return node, true
}

// GatewayID is the SPIFFE ID of the gateway named name in td.
func GatewayID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "strait", "gateway", name)
}

// GatewayName returns the name of a gateway ID of td.
func GatewayName(id spiffeid.ID, td spiffeid.TrustDomain) (string, bool) {
	return infraNode(id, td, "/strait/gateway/")
}
