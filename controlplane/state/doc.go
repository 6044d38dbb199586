// Package state is a site's replicated state: the catalog (services and
// their instances), ACL tokens and the site's identity (trust domain and CA).
// It is the Raft state machine (FSM) and the source of catalog watches.
//
// Concurrency: a Store is safe for concurrent use. Raft calls Apply,
// Snapshot and Restore from its FSM goroutine; readers take a read lock.
// Stored protobuf values are immutable: every change stores a new copy, so
// readers and snapshots may keep the pointers they got, and must never
// modify them.
//
// Layout: a Store holds the state and serves its readers; writes go
// through a tx (apply.go), one per command, which holds the store's write
// lock, the command's index and time, and the catalog changes for the
// watch. The store's parts with rules of their own have their own types:
// vipAllocator (virtual IPs of imported services, vip.go) and quotas
// (what each peer's imports hold, quota.go). The files follow the state's
// concerns: catalog.go, imports.go, tokens.go, identity.go, peers.go,
// mesh.go; fsm.go adapts the store to Raft (apply, snapshot, restore).
//
// Determinism: apply uses only the command and its index, never the local
// clock; the proposer stamps each command with its time.
//
// Format: the Raft log and snapshots are written in the state's own
// messages (statepb), never in the API's, so an API change does not change
// them; commands.go and convert.go convert at the boundary. Each command
// carries its format (CommandFormat when written) and a snapshot its
// version (its header). Adding a field or a command keeps the format: old
// servers skip what they do not know. A change old servers would apply
// wrongly takes a new format, and the upgrade rule is two releases: the
// first understands the new format (apply converts it, TestLogFormat
// replays a fixture of the old one) but still writes the old; the second,
// deployed once every server runs the first, writes the new one. A server
// that meets a command newer than it understands cannot skip it without
// diverging from the others, so it halts its state machine (Halted): it
// applies nothing more and takes no snapshot, keeps serving its state as
// of the command before, and each refused entry returns ErrFormat. Once
// upgraded and restarted it restores its last snapshot and replays the
// log, that command included.
//
// Imported by controlplane and its subpackages only.
package state
