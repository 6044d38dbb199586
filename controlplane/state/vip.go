package state

import (
	"net/netip"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// Virtual IPs: every imported service gets an address from the site's
// virtual IP range, allocated in the FSM while applying the import (so
// every replica allocates the same one). Allocation walks forward from the
// last address handed out, skipping addresses in use, and wraps around:
// a released address is reused only once the rest of the range has been
// used, so a client holding a stale DNS answer is unlikely to reach
// another service. The range travels in the ImportBatch (the leader's
// virtual_ip_cidr); addresses already allocated never change.

// maxVIPScan bounds one allocation's walk (a /12 is 1M addresses).
const maxVIPScan = 1 << 20

// allocateVIP returns a free address of prefix, or false when the range
// is unusable or full. Lock held.
func (s *Store) allocateVIP(cidr string) (netip.Addr, bool) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return netip.Addr{}, false
	}
	p = p.Masked()
	first := p.Addr().Next() // skip the network address
	usable := func(a netip.Addr) bool { return a.IsValid() && p.Contains(a) && !isBroadcast(p, a) }
	if !usable(first) {
		return netip.Addr{}, false
	}
	next := first
	if s.vipLast.IsValid() && usable(s.vipLast.Next()) {
		next = s.vipLast.Next()
	}
	start := next
	for range maxVIPScan {
		if _, used := s.vips[next]; !used {
			s.vipLast = next
			return next, true
		}
		if next = next.Next(); !usable(next) {
			next = first
		}
		if next == start {
			break
		}
	}
	return netip.Addr{}, false
}

// isBroadcast reports whether a is the last address of an IPv4 prefix.
func isBroadcast(p netip.Prefix, a netip.Addr) bool {
	if !a.Is4() || p.Bits() >= 31 {
		return false
	}
	n := a.Next()
	return !n.IsValid() || !p.Contains(n)
}

// trackVIP records an imported service's address. Lock held.
func (s *Store) trackVIP(svc *apipb.Service) {
	if a, err := netip.ParseAddr(svc.VirtualIp); err == nil {
		s.vips[a] = KeyOf(svc)
	}
}

// releaseVIP forgets an imported service's address. Lock held.
func (s *Store) releaseVIP(svc *apipb.Service) {
	if a, err := netip.ParseAddr(svc.GetVirtualIp()); err == nil {
		delete(s.vips, a)
	}
}
