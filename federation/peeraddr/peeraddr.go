// Package peeraddr checks the addresses a peer site announces (its servers
// and its gateways: in the federation handshake and on the replication
// stream) before this site stores them and dials them. A peer chooses
// these strings, so they are hostile input: each must be host:port with an
// IP literal or a DNS name and a port in 1-65535, no longer than MaxLen,
// at most MaxAddresses of them; and none may point at places a peer has
// no business sending this site's servers and gateways to: unspecified,
// multicast and link-local addresses (the cloud metadata service lives at
// 169.254.169.254) always, and loopback unless this site itself runs on
// loopback (dev sites, the demo and tests put every site on 127.0.0.0/8).
//
// A DNS name is checked for syntax only; where it points is decided when
// it is dialed. The functions are pure and safe for concurrent use; the
// control plane and the replication importer both call them.
package peeraddr

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Bounds on what a peer may announce.
const (
	// MaxAddresses bounds each list (servers, gateways) a peer announces.
	MaxAddresses = 16
	// MaxLen bounds one address: a 253-byte DNS name, a colon and a port
	// (or a bracketed IPv6 address).
	MaxLen = 261
)

// Check reports why addr is not an address a peer may announce, or nil.
// allowLoopback admits loopback addresses (see OnLoopback).
func Check(addr string, allowLoopback bool) error {
	if len(addr) > MaxLen {
		return fmt.Errorf("%d bytes long; at most %d are allowed", len(addr), MaxLen)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%q: port %q is outside 1-65535", addr, port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return checkIP(addr, ip, allowLoopback)
	}
	if err := checkName(host); err != nil {
		return fmt.Errorf("%q: %w", addr, err)
	}
	if name := strings.ToLower(strings.TrimSuffix(host, ".")); (name == "localhost" || strings.HasSuffix(name, ".localhost")) && !allowLoopback {
		return fmt.Errorf("%q is a loopback name; this site is not on loopback", addr)
	}
	return nil
}

func checkIP(addr string, ip netip.Addr, allowLoopback bool) error {
	if ip.Zone() != "" {
		return fmt.Errorf("%q has an IPv6 zone", addr)
	}
	ip = ip.Unmap()
	switch {
	case ip.IsUnspecified():
		return fmt.Errorf("%q is the unspecified address", addr)
	case ip.IsMulticast():
		return fmt.Errorf("%q is a multicast address", addr)
	case ip.IsLinkLocalUnicast():
		return fmt.Errorf("%q is a link-local address", addr)
	case ip.IsLoopback() && !allowLoopback:
		return fmt.Errorf("%q is a loopback address; this site is not on loopback", addr)
	}
	return nil
}

// checkName checks DNS name syntax: labels of letters, digits and
// hyphens, 1-63 bytes, not starting or ending with a hyphen; at most 253
// bytes; the last label not all digits (that would be a mistyped IP).
func checkName(host string) error {
	name := strings.TrimSuffix(host, ".")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("host %q is neither an IP address nor a DNS name", host)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("host %q is neither an IP address nor a DNS name", host)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("host %q is neither an IP address nor a DNS name", host)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("host %q is neither an IP address nor a DNS name", host)
	}
	return nil
}

// CheckList checks a list a peer announced: at most MaxAddresses, each as
// Check. The error names the first offending index.
func CheckList(addrs []string, allowLoopback bool) error {
	if len(addrs) > MaxAddresses {
		return fmt.Errorf("%d addresses; at most %d are allowed", len(addrs), MaxAddresses)
	}
	for i, a := range addrs {
		if err := Check(a, allowLoopback); err != nil {
			return fmt.Errorf("[%d]: %w", i, err)
		}
	}
	return nil
}

// OnLoopback reports whether a site whose servers have these addresses
// runs on loopback (every one a loopback IP), and so may be told loopback
// addresses by its peers.
func OnLoopback(serverAddrs []string) bool {
	if len(serverAddrs) == 0 {
		return false
	}
	for _, a := range serverAddrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil || !ap.Addr().Unmap().IsLoopback() {
			return false
		}
	}
	return true
}
