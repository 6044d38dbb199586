// Package hostilepeer is test tooling: an attacker for Strait's own tests,
// scenarios and measurements. It is never linked into the strait binary.
//
// A Peer is a fake federated site with its own CA and trust domain. It can
// redeem a real site's federation invite by calling Federation.Accept
// itself (so the real site treats it as a peer), serve the real site's
// replication stream with crafted events (a flood of services in one
// resync, a resync that never finishes, garbage gateway addresses, churn),
// and act as one of its own gateways towards the real site's gateway
// (tunnelmux over mTLS with a gateway SVID of its trust domain): stream
// floods, SNI floods with distinct unknown names, streams that push bytes
// at a slow instance.
//
// Anonymous misbehaviour needs no Peer: HoldIdle keeps idle TCP, TLS or
// HTTP/2 connections open to an address (with a chosen SNI), DNSFlood sends
// out-of-domain queries at a rate, and FakeUpstream is a DNS upstream that
// never answers or answers with the TC bit.
//
// Everything is bounded in count and in time: every attack takes a count
// and a context, and everything started is stopped by Close (tests
// register it with t.Cleanup). Use it on loopback or in a lab's network
// namespaces only.
package hostilepeer
