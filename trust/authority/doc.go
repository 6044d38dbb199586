// Package authority is a site's certificate authority as one server runs
// it. It owns:
//
//   - the site CA: the active root, opened from the replicated state with
//     the KEK (the key-encryption key, kept in a file by KEKFile, sealed
//     under a cloud key service when one is configured, its data key
//     rotated by age);
//   - X.509-SVID signing (agents, gateways, workloads) and JWT-SVID
//     signing, under one signing rate limit per server (SignRate);
//   - the JWT signing keys: one is created when the site has none;
//   - CA rotation: prepare a new root, activate it after the propagation
//     delay, drop the retired root once every leaf it signed has expired;
//   - this server's own identity: its trust bundle follows the site's
//     roots, and its SVID is re-issued at half-life or as soon as another
//     root signs; and the bundle endpoint's SVID;
//   - the site's own SPIFFE bundle (roots, JWT keys, sequence, refresh
//     hint), as a spiffebundle.Source.
//
// What it needs from consensus it gets through two small interfaces: Store
// (the site record and a change signal) and Consensus (apply a command).
// It does not know about Raft, the server or the API.
//
// An Authority is built with New(Config). Run owns two goroutines until
// its context ends, on every server:
//
//   - followIdentity: waits on Store.IdentityChanged and, at each new
//     bundle sequence, updates the server's trust bundle and renews its
//     SVID if another root signs;
//   - renewLoop: once a minute, re-issues the server's SVID at half-life.
//
// RunLeader runs on the leader's goroutine that calls it, with the
// leadership's context (the server's leader-task runner calls it on each
// leadership): it creates the JWT key if missing, then checks every 200ms
// whether a rotation step is due. The other methods are safe for
// concurrent use from any goroutine (the API's handlers).
//
// Imported by controlplane (which builds it and passes adapters) and
// tests. Of controlplane it imports only the generated messages
// (controlplane/api/apipb, controlplane/state/statepb); it also uses the join-token
// pin encoding (trust/jointoken).
package authority
