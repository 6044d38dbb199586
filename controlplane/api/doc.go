// Package api serves a site's gRPC API: catalog, ACL tokens, operator
// commands and server membership. It authenticates every call (ACL token,
// or a server's SVID for membership calls), validates every request before
// anything is proposed to Raft, forwards writes and consistent reads to the
// leader, and converts errors to gRPC status codes in exactly one place
// (status.go).
//
// The Raft node is reached only through the Node interface, implemented by
// package controlplane. Handlers are safe for concurrent use.
package api
