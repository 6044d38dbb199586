package meshname

import "strings"

// Names of the xDS resources Strait generates for gateways: the contract
// between the servers (controlplane/xds) and any data plane (strait
// gateway, or Envoy).
const (
	// GatewayNodePrefix starts the xDS node ID of a gateway: "gateway/<name>".
	GatewayNodePrefix = "gateway/"
	// IngressListener is the gateway's listener for tunnels from peers.
	IngressListener = "ingress"
	// TunnelALPN is the protocol gateways speak to each other.
	TunnelALPN = "strait-tunnel/2"
)

// OutCluster names the cluster that carries an imported service's port to
// the peer's gateways.
func OutCluster(peer, ns, svc, port string) string {
	return "out/" + peer + "/" + ns + "/" + svc + "/" + port
}

// InCluster names the cluster of a local service's port (its instances).
func InCluster(ns, svc, port string) string { return "in/" + ns + "/" + svc + "/" + port }

// SNI is the server name that selects a service's port at the gateways of
// the site whose trust domain is td: "<port>.<svc>.<ns>.<td>".
func SNI(port, svc, ns, td string) string { return port + "." + svc + "." + ns + "." + td }

// ParseSNI splits a server name made by SNI.
func ParseSNI(sni string) (port, svc, ns, td string, ok bool) {
	parts := strings.SplitN(sni, ".", 4)
	if len(parts) != 4 {
		return "", "", "", "", false
	}
	return parts[0], parts[1], parts[2], parts[3], true
}

// BundleSecret names the SDS secret holding a trust domain's CA
// certificates (a validation context).
func BundleSecret(td string) string { return "bundle/" + td }

// ServersSNI is the server name under which a site's gateways pass
// connections through, undecrypted, to the site's servers: peers' servers
// reach each other this way (join, replication), mTLS end to end.
func ServersSNI(td string) string { return "servers." + td }
