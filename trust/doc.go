// Package trust is the root of a site's identity machinery: the site CA
// (trust/ca), sealing of CA keys at rest (trust/keywrap) and the mTLS
// configurations built from SPIFFE identities (trust/mtls).
//
// Every site is its own SPIFFE trust domain. Identities follow the
// contracts in docs/architecture.md: workloads spiffe://<td>/ns/<ns>/svc/<svc>,
// servers spiffe://<td>/strait/server/<node>, gateways
// spiffe://<td>/strait/gateway/<name>, agents spiffe://<td>/strait/agent/<node>.
package trust

import "github.com/spiffe/go-spiffe/v2/spiffeid"

// ServerID is the SPIFFE ID of the server named node in td.
func ServerID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "strait", "server", node)
}

// IsServer reports whether id names a server of td.
func IsServer(id spiffeid.ID, td spiffeid.TrustDomain) bool {
	_, ok := ServerNode(id, td)
	return ok
}

// ServerNode returns the node name of a server ID of td.
func ServerNode(id spiffeid.ID, td spiffeid.TrustDomain) (string, bool) {
	if id.TrustDomain() != td {
		return "", false
	}
	const prefix = "/strait/server/"
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
