package dns

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// ServeDNS implements mdns.Handler (the TCP server, and tests).
func (s *Server) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	start := time.Now()
	resp, fwd := s.answer(w.RemoteAddr(), req)
	if fwd {
		_, tcp := w.RemoteAddr().(*net.TCPAddr)
		resp = s.forwardBounded(req, tcp)
	}
	if err := w.WriteMsg(resp); err != nil {
		s.cfg.Logger.Debug("dns write failed", "err", err)
	}
	s.observe(req, resp, start)
}

func (s *Server) observe(req, resp *mdns.Msg, start time.Time) {
	qtype := uint16(0)
	if len(req.Question) == 1 {
		qtype = req.Question[0].Qtype
	}
	s.m.observe(qtype, resp.Rcode, time.Since(start))
}

// Extended error texts of refusals and failures (RFC 8914).
const (
	msgNotAllowed     = "recursion is not allowed from this client's address"
	msgNoUpstreams    = "names outside the mesh domain are not forwarded here"
	msgOverloaded     = "too many queries are being forwarded; try again"
	msgUpstreamFailed = "no upstream resolver answered"
)

// answer answers req from the mesh, or refuses it; fwd reports instead
// that it may go upstream (resp is nil then). from is the client.
func (s *Server) answer(from net.Addr, req *mdns.Msg) (resp *mdns.Msg, fwd bool) {
	resp = new(mdns.Msg)
	if req.Response || req.Opcode != mdns.OpcodeQuery || len(req.Question) != 1 {
		resp.SetRcodeFormatError(req)
		return resp, false
	}
	q := req.Question[0]
	name := mdns.CanonicalName(q.Name)
	if !s.inDomain(name) {
		if q.Qtype == mdns.TypePTR && q.Qclass == mdns.ClassINET {
			resp.SetReply(req)
			if s.reverse(resp, name) {
				resp.Authoritative = true
				resp.RecursionAvailable = len(s.cfg.Upstreams) > 0
				return resp, false
			}
		}
		switch {
		case len(s.cfg.Upstreams) == 0:
			s.m.refused(refusedNoUpstream)
			return s.failure(req, mdns.RcodeRefused, false, mdns.ExtendedErrorCodeNotAuthoritative, msgNoUpstreams), false
		case !s.mayRecurse(from):
			s.m.refused(refusedACL)
			return s.failure(req, mdns.RcodeRefused, false, mdns.ExtendedErrorCodeProhibited, msgNotAllowed), false
		}
		return nil, true
	}
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = len(s.cfg.Upstreams) > 0
	if q.Qclass != mdns.ClassINET {
		resp.Rcode = mdns.RcodeNotImplemented
		return resp, false
	}
	exists := s.resolve(resp, name, q.Qtype)
	// Answers carry the question's name as asked (case included), as the
	// fast path's compression pointers do and 0x20-randomizing resolvers
	// expect.
	for _, rr := range resp.Answer {
		if h := rr.Header(); h.Name == name {
			h.Name = q.Name
		}
	}
	switch {
	case !exists:
		resp.Rcode = mdns.RcodeNameError
		resp.Ns = []mdns.RR{s.soa()}
	case len(resp.Answer) == 0:
		resp.Ns = []mdns.RR{s.soa()} // NODATA
	}
	size := udpSize(req)
	if req.IsEdns0() != nil {
		resp.SetEdns0(uint16(size), false)
	}
	if _, tcp := from.(*net.TCPAddr); tcp {
		size = mdns.MaxMsgSize
	}
	resp.Truncate(size)
	if resp.Truncated {
		s.m.truncatedMesh.Inc()
	}
	return resp, false
}

func (s *Server) hdr(name string, t uint16) mdns.RR_Header {
	return mdns.RR_Header{Name: name, Rrtype: t, Class: mdns.ClassINET, Ttl: s.ttl}
}

func (s *Server) soa() *mdns.SOA {
	return &mdns.SOA{Hdr: s.hdr(s.domain, mdns.TypeSOA), Ns: "ns." + s.domain, Mbox: "hostmaster." + s.domain,
		Serial: uint32(s.view.indexSnapshot()), Refresh: 3600, Retry: 600, Expire: 86400, Minttl: s.ttl}
}

// resolve fills resp for a name under the domain and reports whether the
// name exists.
func (s *Server) resolve(resp *mdns.Msg, name string, qtype uint16) bool {
	rel := strings.TrimSuffix(strings.TrimSuffix(name, s.domain), ".")
	var labels []string
	if rel != "" {
		labels = strings.Split(rel, ".")
	}
	if len(labels) == 0 { // apex
		switch qtype {
		case mdns.TypeSOA:
			resp.Answer = append(resp.Answer, s.soa())
		case mdns.TypeNS:
			resp.Answer = append(resp.Answer, &mdns.NS{Hdr: s.hdr(s.domain, mdns.TypeNS), Ns: "ns." + s.domain})
		}
		return true
	}
	// SRV: _<port>._tcp.<service name>
	if strings.HasPrefix(labels[0], "_") {
		if len(labels) < 4 || labels[1] != "_tcp" {
			return false
		}
		port := labels[0][1:]
		svc, ns, site, ok := s.serviceName(labels[2:])
		if !ok {
			return false
		}
		found := false
		s.view.lookup(func(c *catalog) {
			sv, exists := s.pick(c, ns, svc, site, port)
			found = exists
			if sv == nil || (qtype != mdns.TypeSRV && qtype != mdns.TypeANY) {
				return
			}
			if sv.key.peer != "" {
				// An imported service: its virtual IP, on the port its
				// instances use.
				target := svc + "." + ns + "." + sv.key.peer + "." + s.domain
				resp.Answer = append(resp.Answer, &mdns.SRV{Hdr: s.hdr(name, mdns.TypeSRV), Priority: 1, Weight: 1, Port: uint16(virtualPort(sv, port)), Target: target})
				resp.Extra = append(resp.Extra, s.addrRR(target, sv.vip))
				return
			}
			for _, in := range passing(sv) {
				p, ok := in.ports[port]
				if !ok {
					continue
				}
				target := in.id + "." + svc + "." + ns + "." + s.cfg.Site + "." + s.domain
				resp.Answer = append(resp.Answer, &mdns.SRV{Hdr: s.hdr(name, mdns.TypeSRV), Priority: 1, Weight: 1, Port: uint16(p), Target: target})
				resp.Extra = append(resp.Extra, s.addrRR(target, in.addr))
			}
		})
		return found
	}
	switch len(labels) {
	case 1: // <site>
		return labels[0] == s.cfg.Site || s.hasNamespace(labels[0]) || s.hasPeer(labels[0])
	case 2: // <svc>.<ns> (wherever it is healthy), or <ns>.<site>
		if labels[1] == s.cfg.Site && s.hasNamespace(labels[0]) {
			return true
		}
		return s.addresses(resp, name, labels[1], labels[0], "", "", qtype)
	case 3: // <svc>.<ns>.<site>
		return s.addresses(resp, name, labels[1], labels[0], labels[2], "", qtype)
	case 4: // <id>.<svc>.<ns>.<site>: instances of local services only
		if labels[3] != s.cfg.Site {
			return false
		}
		return s.addresses(resp, name, labels[2], labels[1], labels[3], labels[0], qtype)
	}
	return false
}

// serviceName parses <svc>.<ns>[.<site>]; site is empty for the failover
// form.
func (s *Server) serviceName(l []string) (svc, ns, site string, ok bool) {
	switch len(l) {
	case 2:
		return l[0], l[1], "", true
	case 3:
		return l[0], l[1], l[2], true
	}
	return "", "", "", false
}

// pick chooses the service that answers for <svc>.<ns>[.<site>]: the local
// one for this site's name, the import for a peer's name, and for no site
// the local one while it has a passing instance, else the first peer in
// failover order whose import has instances. With port set, only services
// defining that port count. exists reports whether the name exists at all
// (NODATA rather than NXDOMAIN when nothing answers). View lock held.
func (s *Server) pick(c *catalog, ns, svc, site, port string) (sv *service, exists bool) {
	usable := func(x *service) bool {
		if x == nil {
			return false
		}
		if port != "" {
			if _, ok := x.ports[port]; !ok {
				return false
			}
		}
		return true
	}
	if site != "" {
		key := svcKey{"", ns, svc}
		if site != s.cfg.Site {
			key.peer = site
		}
		x := c.services[key]
		if !usable(x) {
			return nil, false
		}
		if x.answers() {
			return x, true
		}
		return nil, true
	}
	if x := c.services[svcKey{"", ns, svc}]; usable(x) {
		exists = true
		if x.answers() {
			return x, true
		}
	}
	for _, peer := range c.order {
		if x := c.services[svcKey{peer, ns, svc}]; usable(x) {
			exists = true
			if x.answers() {
				return x, true
			}
		}
	}
	return nil, exists
}

// virtualPort is the port an imported service is reached on at its
// virtual IP: the number its instances use for that port name (the lowest
// when they differ).
func virtualPort(sv *service, name string) uint32 {
	var p uint32
	for _, in := range sv.instances {
		if n, ok := in.ports[name]; ok && (p == 0 || n < p) {
			p = n
		}
	}
	return p
}

func (s *Server) hasPeer(peer string) bool {
	found := false
	s.view.lookup(func(c *catalog) { found = c.peers[peer] > 0 })
	return found
}

func (s *Server) hasNamespace(ns string) bool {
	found := false
	s.view.lookup(func(c *catalog) {
		for k := range c.services {
			if k.ns == ns {
				found = true
				return
			}
		}
	})
	return found
}

func passing(sv *service) []*instance {
	out := make([]*instance, 0, len(sv.instances))
	for _, in := range sv.instances {
		if in.passing {
			out = append(out, in)
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func (s *Server) addrRR(name string, a netip.Addr) mdns.RR {
	if a.Is4() {
		return &mdns.A{Hdr: s.hdr(name, mdns.TypeA), A: a.AsSlice()}
	}
	return &mdns.AAAA{Hdr: s.hdr(name, mdns.TypeAAAA), AAAA: a.AsSlice()}
}

// addresses answers A/AAAA for a service (id empty) or one instance of a
// local service: the passing instances of a local service, the virtual IP
// of an imported one.
func (s *Server) addresses(resp *mdns.Msg, name, ns, svc, site, id string, qtype uint16) bool {
	found := false
	s.view.lookup(func(c *catalog) {
		var ins []*instance
		if id != "" {
			sv := c.services[svcKey{"", ns, svc}]
			if sv == nil {
				return
			}
			in, ok := sv.instances[id]
			if !ok {
				return
			}
			found = true
			if in.passing {
				ins = []*instance{in}
			}
		} else {
			var sv *service
			if sv, found = s.pick(c, ns, svc, site, ""); sv == nil {
				return
			}
			if sv.key.peer != "" {
				s.appendAddr(resp, name, sv.vip, qtype)
				return
			}
			ins = passing(sv)
		}
		for _, in := range ins {
			s.appendAddr(resp, name, in.addr, qtype)
		}
	})
	return found
}

// appendAddr adds a as an answer when it matches qtype.
func (s *Server) appendAddr(resp *mdns.Msg, name string, a netip.Addr, qtype uint16) {
	if (qtype == mdns.TypeA || qtype == mdns.TypeANY) && a.Is4() ||
		(qtype == mdns.TypeAAAA || qtype == mdns.TypeANY) && a.Is6() {
		resp.Answer = append(resp.Answer, s.addrRR(name, a))
	}
}

// reverse answers a PTR query for a virtual IP; ok is false when the name
// is not the reverse name of one (it is then forwarded like any other).
func (s *Server) reverse(resp *mdns.Msg, name string) bool {
	a, ok := parseReverse(name)
	if !ok {
		return false
	}
	s.view.lookup(func(c *catalog) {
		sv := c.byVIP[a]
		if sv == nil {
			ok = false
			return
		}
		target := sv.key.name + "." + sv.key.ns + "." + sv.key.peer + "." + s.domain
		resp.Answer = append(resp.Answer, &mdns.PTR{Hdr: s.hdr(name, mdns.TypePTR), Ptr: target})
	})
	return ok
}

// parseReverse turns d.c.b.a.in-addr.arpa. (or the 32-nibble ip6.arpa.
// form) into the address.
func parseReverse(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa."); ok {
		l := strings.Split(rest, ".")
		if len(l) != 4 {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(l[3] + "." + l[2] + "." + l[1] + "." + l[0])
		return a, err == nil
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa."); ok {
		l := strings.Split(rest, ".")
		if len(l) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, nib := range l {
			if len(nib) != 1 {
				return netip.Addr{}, false
			}
			v := strings.IndexByte("0123456789abcdef", nib[0])
			if v < 0 {
				return netip.Addr{}, false
			}
			pos := 31 - i
			b[pos/2] |= byte(v) << (4 * (1 - pos%2))
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}
