// Package controlplane is a site's control-plane server: one Raft node
// holding the replicated state (package state), the site authority
// (package trust/authority), and the gRPC API (package api), all served
// over mTLS on one port (package mux).
//
// A Server is built with New(Config) and run with Run(ctx). Run owns these
// goroutines, as tasks of one errgroup (the first error stops the rest; a
// cancelled context is a clean shutdown):
//
//   - the mux accept loop (one goroutine per TLS handshake);
//   - the gRPC server;
//   - the metrics HTTP server, when configured;
//   - leadership (the leader-task runner, leaderRunner): on gaining
//     leadership it runs the prepare steps in order (a barrier before
//     serving consistent reads, the site's bootstrap once), then starts
//     every leader task (the TTL tracker, the site authority's leader work:
//     JWT key and CA rotation, peering's leader work: foreign bundle
//     refresh and replication, the configured LeaderTasks); on losing it,
//     cancels them all and waits for them;
//   - the site authority (package trust/authority): keeps the server's
//     trust bundle and SVID in step with the site's CA roots, and renews
//     the SVID at half-life;
//   - promotion: a server that joined as a non-voter asks the leader to
//     make it a voter once it has applied the log up to its join.
//
// Raft runs its own goroutines (see hashicorp/raft); the Server calls into
// it through raftNode (commit a command, leadership and its context,
// consistent reads, membership), never the other way round except
// through the FSM. The API (package api) gets one small interface per
// service, implemented here by raftNode, raftAdmin, the TTL tracker and
// the Server; cloud integrations get a CloudSite.
//
// Imported by cmd/strait and tests only.
package controlplane
