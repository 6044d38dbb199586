// Package federation is where sites become peers: federation tokens
// (federation/token), the addresses a peer may announce
// (federation/peeraddr), the replication stream of exported services
// between peers (federation/replication), and peering itself
// (federation/peering: invites, joins, unpeering, running the streams and
// refreshing foreign bundles). Each site stays its own trust domain; peers
// hold each other's bundles per trust domain, never merged.
//
// These packages reach Raft and the replicated state only through
// interfaces the control-plane server implements; none imports the
// controlplane package.
package federation
