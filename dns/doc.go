// Package dns is the mesh DNS server: it answers names under the mesh
// domain ("mesh." by default) from an in-memory view of the catalog kept
// current by a watch stream — never a Raft read per query — and forwards
// everything else to upstream resolvers, for the clients allowed to
// recurse (or refuses it). See README.md for the limits on forwarding.
//
// Names (docs/architecture.md):
//
//	<svc>.<ns>.<site>.<domain>          A/AAAA of the passing instances
//	<svc>.<ns>.<domain>                 the same, wherever the service is (today: the local site)
//	<id>.<svc>.<ns>.<site>.<domain>     one instance
//	_<port>._tcp.<svc>.<ns>[.<site>].<domain>   SRV, targets the instance names, with glue
//	<domain>                            SOA and NS
//
// Not yet: imported services (virtual IPs, PTR) and cross-site failover,
// which need federation's replication.
//
// Goroutines: Run owns the watch loop (the only writer of the view), the
// UDP loop (batched reads and writes, answering mesh names and refusals
// inline; a goroutine per forwarded query, each holding one of at most
// MaxForwards slots) and miekg/dns's TCP server; handlers read the view
// under a read lock. Each upstream socket has a reader goroutine (forward.go),
// which ends when Run closes the socket.
// Imported by controlplane (every server runs one) and cmd/strait.
package dns
