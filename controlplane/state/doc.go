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
// Determinism: apply uses only the command and its index, never the local
// clock; the proposer stamps each command with its time.
//
// Imported by controlplane and its subpackages only.
package state
