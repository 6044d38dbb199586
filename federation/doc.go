// Package federation is where sites become peers: federation tokens
// (federation/token) and the replication stream of exported services
// between peers (federation/replication). Each site stays its own trust
// domain; peers hold each other's bundles per trust domain, never merged.
//
// The join handshake and the wiring of replication to Raft run in the
// control plane (they need Raft to consume the token, store the peering
// and commit imports); these packages hold the parts independent of it.
package federation
