// Package peering is how a site's servers make and keep peerings with
// other sites: it issues federation invites (CreateInvite), redeems
// another site's (Join), takes a joiner's side of the handshake (Accept),
// tells a removed peer (NotifyUnpeer), asks a peer's servers for their
// intention decisions (CheckIntention), dials each peer's replication
// stream and serves the peers' streams (ServeExport), and keeps foreign
// bundles, peers' included, fresh from their endpoints (FetchForeign).
//
// A Manager owns the replication registry (the streams' runtime state and
// metrics) and the goroutines below. It reaches Raft, the replicated
// state and the site's identity only through the small interfaces of its
// Config (Consensus, Store, Identity, Invites, Imports, and
// replication.Catalog for Exports), which the control-plane server
// implements with adapters; it imports neither hashicorp/raft nor the
// controlplane package nor its state machine (controlplane/state), only
// their message packages (apipb, statepb). It returns errors, never gRPC
// statuses: the sentinel kinds in errors.go are mapped to status codes by
// the API (controlplane/api), the one place they are made.
//
// Goroutines. All of them run only while this server leads, under
// RunLeader, which the server's leader-task runner starts when leadership
// begins and cancels when it ends; RunLeader returns once every one has
// stopped:
//   - the importer supervisor (replicate): one importer goroutine per
//     peering (replication.Importer.Run), started and stopped as peerings
//     come and go (woken by Store.IdentityChanged);
//   - the foreign-bundle refresher (refreshForeign): a 250ms ticker that
//     starts one fetch goroutine per trust domain that is due, at most one
//     per trust domain at a time.
//
// ServeExport runs on the caller's goroutine (a gRPC stream handler) and
// ends with the stream or with the leadership RunLeader was started
// under. The other methods run on their caller's goroutine too; every
// method is safe for concurrent use.
//
// Imported by the control-plane server (which builds and runs it) and by
// its API (for the error kinds); it must not import either.
package peering
