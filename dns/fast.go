package dns

import (
	"encoding/binary"
	"net/netip"
	"time"

	mdns "github.com/miekg/dns"
)

// The fast path answers the query that dominates real traffic — one
// question, class IN, type A or AAAA, for a service name under the mesh
// domain that has addresses to give — straight from the request bytes into
// the response buffer, without decoding into a message, allocating, or
// compressing names: every answer's owner is a pointer to the question.
// Anything else (other types, instance and SRV names, negative answers,
// malformed packets) returns ok=false and takes the general path, which
// is the reference: FuzzFastPath checks the two agree.

const (
	hdrLen   = 12
	optLen   = 11 // an OPT record without options
	maxLabel = 63
)

// fastAnswer writes the response to req into dst[:0] and returns it, or
// ok=false.
func (s *Server) fastAnswer(req, dst []byte) ([]byte, bool) {
	start := time.Now()
	if len(req) < hdrLen+5 {
		return nil, false
	}
	flags := binary.BigEndian.Uint16(req[2:])
	// QR=0, opcode QUERY, TC=0; one question, nothing else but an OPT.
	if flags&0xfa00 != 0 || binary.BigEndian.Uint16(req[4:]) != 1 ||
		binary.BigEndian.Uint16(req[6:]) != 0 || binary.BigEndian.Uint16(req[8:]) != 0 {
		return nil, false
	}
	arcount := binary.BigEndian.Uint16(req[10:])
	if arcount > 1 {
		return nil, false
	}
	// The question name, lowercased, split into labels.
	var name [256]byte
	var starts [128]uint8
	nLabels, n := 0, 0
	off := hdrLen
	for {
		if off >= len(req) {
			return nil, false
		}
		l := int(req[off])
		off++
		if l == 0 {
			break
		}
		if l > maxLabel || off+l > len(req) || n+l+1 > 255 || nLabels == len(starts) {
			return nil, false // also rejects compression pointers
		}
		starts[nLabels] = uint8(n)
		nLabels++
		for _, c := range req[off : off+l] {
			switch {
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
			default:
				return nil, false // not a name we serve here
			}
			name[n] = c
			n++
		}
		name[n] = '.'
		n++
		off += l
	}
	qend := off + 4
	if qend > len(req) {
		return nil, false
	}
	qtype := binary.BigEndian.Uint16(req[off:])
	if (qtype != mdns.TypeA && qtype != mdns.TypeAAAA) || binary.BigEndian.Uint16(req[off+2:]) != mdns.ClassINET {
		return nil, false
	}
	size, edns := 512, false
	if arcount == 1 {
		// OPT: root owner, type 41, class = UDP size, version 0.
		o := req[qend:]
		if len(o) < optLen || o[0] != 0 || binary.BigEndian.Uint16(o[1:]) != mdns.TypeOPT || o[6] != 0 {
			return nil, false
		}
		rdlen := int(binary.BigEndian.Uint16(o[9:]))
		if optLen+rdlen != len(o) {
			return nil, false
		}
		edns = true
		size = max(512, min(int(binary.BigEndian.Uint16(o[3:])), 4096))
	} else if qend != len(req) {
		return nil, false
	}
	// Under the domain, and <svc>.<ns> or <svc>.<ns>.<site>.
	d := len(s.domain)
	if n < d || string(name[n-d:n]) != s.domain {
		return nil, false
	}
	rel := nLabels - s.domainLabels
	if (rel != 2 && rel != 3) || (n > d && name[n-d-1] != '.') {
		return nil, false
	}
	label := func(i int) []byte {
		end := n - d
		if i+1 < nLabels {
			end = int(starts[i+1])
		}
		return name[starts[i] : end-1]
	}
	svc, ns := label(0), label(1)
	var site []byte
	if rel == 3 {
		site = label(2)
	} else if string(ns) == s.cfg.Site {
		return nil, false // <ns>.<site>: the general path decides
	}

	out := dst[:0]
	out = append(out, req[0], req[1])
	f := uint16(0x8000 | 0x0400) // QR, AA
	f |= flags & 0x0100          // RD
	if len(s.cfg.Upstreams) > 0 {
		f |= 0x0080 // RA
	}
	out = binary.BigEndian.AppendUint16(out, f)
	out = append(out, 0, 1, 0, 0, 0, 0, 0, 0) // counts, filled below
	out = append(out, req[hdrLen:qend]...)
	limit := size
	if edns {
		limit -= optLen
	}
	rrLen := 16
	if qtype == mdns.TypeAAAA {
		rrLen = 28
	}
	answers, truncated := 0, false
	add := func(a netip.Addr) {
		if (qtype == mdns.TypeA) != a.Is4() {
			return
		}
		if len(out)+rrLen > limit {
			truncated = true
			return
		}
		out = append(out, 0xc0, hdrLen, byte(qtype>>8), byte(qtype), 0, 1)
		out = binary.BigEndian.AppendUint32(out, s.ttl)
		if a.Is4() {
			b := a.As4()
			out = append(out, 0, 4, b[0], b[1], b[2], b[3])
		} else {
			b := a.As16()
			out = append(out, 0, 16)
			out = append(out, b[:]...)
		}
		answers++
	}
	found := false
	s.view.lookup(func(c *catalog) {
		sv := c.pickBytes(s.cfg.Site, ns, svc, site)
		if sv == nil {
			return
		}
		found = true
		if sv.key.peer != "" {
			add(sv.vip)
			return
		}
		// Go's map iteration starts at a random place: the answers come
		// in a different order each time, as the general path shuffles.
		for _, in := range sv.instances {
			if in.passing {
				add(in.addr)
			}
		}
	})
	if !found || answers == 0 {
		return nil, false // NXDOMAIN or NODATA: the general path adds the SOA
	}
	binary.BigEndian.PutUint16(out[6:], uint16(answers))
	if truncated {
		out[2] |= 0x02 // TC
	}
	if edns {
		binary.BigEndian.PutUint16(out[10:], 1)
		out = append(out, 0, 0, 41)
		out = binary.BigEndian.AppendUint16(out, uint16(size))
		out = append(out, 0, 0, 0, 0, 0, 0)
	}
	s.m.observeFast(qtype, time.Since(start))
	return out, true
}

// pickBytes is pick for the fast path, without allocating: a service's
// key is looked up by bytes. It returns only a service that has addresses
// to give (nil otherwise, including for a name that exists without them).
func (c *catalog) pickBytes(localSite string, ns, svc, site []byte) *service {
	var buf [3 * 64]byte
	lookup := func(peerS string, peerB []byte) *service {
		k := append(buf[:0], peerS...)
		k = append(k, peerB...)
		k = append(k, 0)
		k = append(k, ns...)
		k = append(k, 0)
		k = append(k, svc...)
		if sv := c.byName[string(k)]; sv != nil && sv.answers() {
			return sv
		}
		return nil
	}
	if site != nil {
		if string(site) == localSite {
			return lookup("", nil)
		}
		return lookup("", site)
	}
	if sv := lookup("", nil); sv != nil {
		return sv
	}
	for _, peer := range c.order {
		if sv := lookup(peer, nil); sv != nil {
			return sv
		}
	}
	return nil
}
