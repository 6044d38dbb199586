// Package federation is where sites become peers: federation tokens
// (federation/token), the join handshake, and (to come) the replication
// stream of exported services between peers. Each site stays its own trust
// domain; peers hold each other's bundles per trust domain, never merged.
//
// Today the join handshake runs in the control plane's API (it needs Raft
// to consume the token and store the peering); this package holds the
// parts that are independent of it.
package federation
