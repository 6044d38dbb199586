package dns

import (
	"log/slog"
	"net"
	"net/netip"
)

// Who may have names outside the mesh domain forwarded. Without a limit
// the server is an open resolver: anyone who reaches dns_addr could use it
// to reflect answers at a spoofed address, or to spend its upstream
// sockets.

// loopback and private are the building blocks of the default.
var (
	loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	private  = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),     // RFC 1918
		netip.MustParsePrefix("172.16.0.0/12"),  // RFC 1918
		netip.MustParsePrefix("192.168.0.0/16"), // RFC 1918
		netip.MustParsePrefix("100.64.0.0/10"),  // RFC 6598 shared address space
		netip.MustParsePrefix("fc00::/7"),       // RFC 4193 unique local
	}
)

// DefaultAllowRecursionFrom is the recursion ACL when none is configured:
// loopback (127.0.0.0/8 and ::1), plus each private range — 10.0.0.0/8,
// 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7 — that holds one of
// addrs (this host's interface addresses). A host at 10.1.2.3 thus serves
// 10.0.0.0/8; one with public addresses only serves loopback alone.
func DefaultAllowRecursionFrom(addrs []netip.Addr) []netip.Prefix {
	out := append([]netip.Prefix(nil), loopback...)
	for _, p := range private {
		for _, a := range addrs {
			if p.Contains(a.Unmap()) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// interfaceAddrs lists this host's interface addresses (none, logged, when
// they cannot be read).
func interfaceAddrs(log *slog.Logger) []netip.Addr {
	ifa, err := net.InterfaceAddrs()
	if err != nil {
		log.Warn("dns cannot list interface addresses; forwarding only for loopback", "err", err)
		return nil
	}
	var out []netip.Addr
	for _, a := range ifa {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// mayRecurse reports whether a client at addr may have names outside the
// mesh domain forwarded.
func (s *Server) mayRecurse(addr net.Addr) bool {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip = a.AddrPort().Addr()
	case *net.TCPAddr:
		ip = a.AddrPort().Addr()
	default:
		if addr == nil {
			return false
		}
		ap, err := netip.ParseAddrPort(addr.String())
		if err != nil {
			return false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap().WithZone("")
	for _, p := range s.acl {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
