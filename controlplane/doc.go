// Package controlplane is a site's control-plane server: one Raft node
// holding the replicated state (package state), the site CA, and the gRPC
// API (package api), all served over mTLS on one port (package mux).
//
// A Server is built with New(Config) and run with Run(ctx). Run owns these
// goroutines, as tasks of one errgroup (the first error stops the rest; a
// cancelled context is a clean shutdown):
//
//   - the mux accept loop (one goroutine per TLS handshake);
//   - the gRPC server;
//   - the metrics HTTP server, when configured;
//   - the leader loop: on gaining leadership it waits for a barrier before
//     serving consistent reads, bootstraps the site once, makes sure a JWT
//     key exists, and runs the TTL tracker, the CA rotator, the leader
//     tasks and peering's leader work (federation/peering's RunLeader:
//     the replication importers and the foreign bundle refresher); on
//     losing it, stops them all;
//   - followIdentity: keeps the server's trust bundle and SVID in step
//     with the site's CA roots;
//   - SVID renewal of the server's own identity at half-life;
//   - promotion: a server that joined as a non-voter asks the leader to
//     make it a voter once it has applied the log up to its join.
//
// Raft runs its own goroutines (see hashicorp/raft); the Server calls into
// it, never the other way round except through the FSM.
//
// Imported by cmd/strait and tests only.
package controlplane
