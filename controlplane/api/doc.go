// Package api serves a site's gRPC API: catalog, ACL tokens, operator
// commands and server membership. It authenticates every call (ACL token,
// or a server's SVID for membership calls), validates every request before
// anything is proposed to Raft, forwards writes and consistent reads to the
// leader, and converts errors to gRPC status codes in exactly one place
// (status.go).
//
// Each service is a handler type of its own (catalogService, aclService,
// ...) sharing Server: the interceptors, authentication and authorization,
// forwarding to the leader, and the bounds on signing and diagnostics.
// What a service needs of the server is a small interface declared in
// node.go (Raft, Catalog, Operator, Cluster, Bundles), authority.go
// (Authority: trust/authority) and peering.go (Peering: federation/peering),
// implemented by those packages and given in Config.
// Handlers are safe for concurrent use.
package api
