package state

import (
	"encoding/binary"
	"math/bits"
	"net/netip"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// Virtual IPs: every imported service gets an address from the site's
// virtual IP range, allocated in the FSM while applying the import (so
// every replica allocates the same one). Allocation walks forward from the
// last address handed out, skipping addresses in use, and wraps around:
// a released address is reused only once the rest of the range has been
// used, so a client holding a stale DNS answer is unlikely to reach
// another service. The range travels in the ImportBatch (the leader's
// virtual_ip_cidr); addresses already allocated never change.
//
// The walk runs on an index of the range (vipIndex), a bitmap of used
// addresses with a summary of its full words: finding the next free
// address reads at most one summary bit per 64 addresses and one word, so
// its cost does not grow with the number allocated.
//
// Shares: a batch with limits (statepb.ImportLimits) lets its peer hold
// at most an equal share of the range among the current peerings, and no
// more than its service quota. A service the peer has no share left for is
// imported without an address (ImportUsage.WithoutVIP counts them) and
// gets one on a later update once the peer is under its share and an
// address is free. Addresses already held are never taken back, so a
// peering added after others took their share of a full range finds
// nothing free until they release some: the cure is a larger range.

// maxVIPIndex bounds the addresses of a range that are used (a /8 of IPv4;
// an IPv6 range is used from its start): the index costs one bit each.
const maxVIPIndex = 1 << 24

// vipIndex marks the used addresses of one range. The network address,
// an IPv4 broadcast address and the bits past the range are marked used
// for good.
type vipIndex struct {
	prefix netip.Prefix
	hi, lo uint64 // the network address, as a 128-bit number
	n      uint64 // addresses covered, from the network address
	usable uint64 // addresses that can be allocated
	used   []uint64
	full   []uint64 // bit i: used[i] has no free address
}

func newVIPIndex(p netip.Prefix) *vipIndex {
	hostBits := p.Addr().BitLen() - p.Bits()
	n := uint64(maxVIPIndex)
	if hostBits <= 24 {
		n = 1 << hostBits
	}
	words := (n + 63) / 64
	x := &vipIndex{prefix: p, n: n, used: make([]uint64, words), full: make([]uint64, (words+63)/64)}
	x.hi, x.lo = addr128(p.Addr())
	for i := n; i < words*64; i++ {
		x.set(i)
	}
	for i := words; i < uint64(len(x.full))*64; i++ {
		x.full[i/64] |= 1 << (i % 64)
	}
	x.set(0)
	x.usable = n - 1
	if p.Addr().Is4() && p.Bits() < 31 && hostBits <= 24 {
		x.set(n - 1)
		x.usable--
	}
	return x
}

func addr128(a netip.Addr) (hi, lo uint64) {
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

// offset returns a's position in the index, if it is covered.
func (x *vipIndex) offset(a netip.Addr) (uint64, bool) {
	if !x.prefix.Contains(a) {
		return 0, false
	}
	hi, lo := addr128(a)
	d, borrow := bits.Sub64(lo, x.lo, 0)
	if hi-x.hi-borrow != 0 || d >= x.n {
		return 0, false
	}
	return d, true
}

// addr returns the address at position i.
func (x *vipIndex) addr(i uint64) netip.Addr {
	lo, carry := bits.Add64(x.lo, i, 0)
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], x.hi+carry)
	binary.BigEndian.PutUint64(b[8:], lo)
	a := netip.AddrFrom16(b)
	if x.prefix.Addr().Is4() {
		a = a.Unmap()
	}
	return a
}

func (x *vipIndex) set(i uint64) {
	w := i / 64
	x.used[w] |= 1 << (i % 64)
	if x.used[w] == ^uint64(0) {
		x.full[w/64] |= 1 << (w % 64)
	}
}

func (x *vipIndex) clear(i uint64) {
	w := i / 64
	x.used[w] &^= 1 << (i % 64)
	x.full[w/64] &^= 1 << (w % 64)
}

// nextFree returns the first free position at or after from, wrapping
// around once.
func (x *vipIndex) nextFree(from uint64) (uint64, bool) {
	if i, ok := x.scan(from); ok {
		return i, true
	}
	return x.scan(0)
}

// scan returns the first free position at or after from.
func (x *vipIndex) scan(from uint64) (uint64, bool) {
	w := from / 64
	if w >= uint64(len(x.used)) {
		return 0, false
	}
	if free := ^x.used[w] & (^uint64(0) << (from % 64)); free != 0 {
		return w*64 + uint64(bits.TrailingZeros64(free)), true
	}
	// The next word with a free address, from the summary.
	w++
	for s := w / 64; s < uint64(len(x.full)); s++ {
		mask := ^uint64(0)
		if s == w/64 {
			mask <<= w % 64
		}
		if open := ^x.full[s] & mask; open != 0 {
			w = s*64 + uint64(bits.TrailingZeros64(open))
			return w*64 + uint64(bits.TrailingZeros64(^x.used[w])), true
		}
	}
	return 0, false
}

// vipAllocator hands out the virtual IPs of imported services and keeps
// track of those in use. It is part of the store: the store's lock guards
// it.
type vipAllocator struct {
	byAddr map[netip.Addr]ServiceKey // addresses in use
	last   netip.Addr                // the last address allocated
	idx    [2]*vipIndex              // used addresses of the last two ranges allocated from; built on demand
}

// indexFor returns the index of the range cidr, building it from the
// addresses in use when it is not one of the last two ranges used (a
// change of virtual_ip_cidr, or leaders that disagree during a rolling
// change of it); nil when cidr is unusable.
func (v *vipAllocator) indexFor(cidr string) *vipIndex {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil
	}
	p = p.Masked()
	for i, x := range v.idx {
		if x != nil && x.prefix == p {
			v.idx[0], v.idx[i] = x, v.idx[0]
			return x
		}
	}
	if p.Addr().BitLen()-p.Bits() < 1 {
		return nil
	}
	x := newVIPIndex(p)
	for a := range v.byAddr {
		if i, ok := x.offset(a); ok {
			x.set(i)
		}
	}
	v.idx[0], v.idx[1] = x, v.idx[0]
	return x
}

// allocate returns a free address of the range cidr, or false when the
// range is unusable or full.
func (v *vipAllocator) allocate(cidr string) (netip.Addr, bool) {
	x := v.indexFor(cidr)
	if x == nil || x.usable == 0 {
		return netip.Addr{}, false
	}
	var from uint64 = 1 // skip the network address
	if i, ok := x.offset(v.last); ok && i+1 < x.n {
		from = i + 1
	}
	i, ok := x.nextFree(from)
	if !ok {
		return netip.Addr{}, false
	}
	a := x.addr(i)
	v.last = a
	return a, true
}

// share is how many virtual IPs of the range cidr one peer may hold
// under lim: an equal share of the range among the current peerings
// (peers of them), and no more than its service quota.
func (v *vipAllocator) share(cidr string, peers int, lim *statepb.ImportLimits) int {
	x := v.indexFor(cidr)
	if x == nil {
		return 0
	}
	share := x.usable / uint64(max(peers, 1))
	if lim.MaxServices > 0 {
		share = min(share, uint64(lim.MaxServices))
	}
	return int(share)
}

func vipOf(svc *apipb.Service) netip.Addr {
	a, _ := netip.ParseAddr(svc.GetVirtualIp())
	return a
}

// track records an imported service's address; it reports whether the
// address is newly the service's.
func (v *vipAllocator) track(svc *apipb.Service) bool {
	a := vipOf(svc)
	if !a.IsValid() {
		return false
	}
	k := KeyOf(svc)
	if prev, ok := v.byAddr[a]; ok && prev == k {
		return false
	}
	v.byAddr[a] = k
	for _, x := range v.idx {
		if x == nil {
			continue
		}
		if i, ok := x.offset(a); ok {
			x.set(i)
		}
	}
	return true
}

// release forgets an imported service's address; it reports whether the
// service held it.
func (v *vipAllocator) release(svc *apipb.Service) bool {
	a := vipOf(svc)
	k, ok := v.byAddr[a]
	if !ok || k != KeyOf(svc) {
		return false
	}
	delete(v.byAddr, a)
	for _, x := range v.idx {
		if x == nil {
			continue
		}
		if i, ok := x.offset(a); ok {
			x.clear(i)
		}
	}
	return true
}

// trackVIP records an imported service's address, and counts it against
// its peer.
func (t *tx) trackVIP(svc *apipb.Service) {
	if t.s.vip.track(svc) && svc.Peer != "" {
		t.s.quota.usage(svc.Peer).VIPs++
	}
}

// releaseVIP forgets an imported service's address.
func (t *tx) releaseVIP(svc *apipb.Service) {
	if t.s.vip.release(svc) && svc.Peer != "" {
		t.s.quota.usage(svc.Peer).VIPs--
	}
}
