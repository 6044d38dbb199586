package dns

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// ServeDNS implements mdns.Handler.
func (s *Server) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	start := time.Now()
	resp := s.answer(w, req)
	if resp == nil {
		return
	}
	if err := w.WriteMsg(resp); err != nil {
		s.cfg.Logger.Debug("dns write failed", "err", err)
	}
	qtype := uint16(0)
	if len(req.Question) == 1 {
		qtype = req.Question[0].Qtype
	}
	s.m.observe(qtype, resp.Rcode, time.Since(start))
}

func (s *Server) answer(w mdns.ResponseWriter, req *mdns.Msg) *mdns.Msg {
	resp := new(mdns.Msg)
	if req.Response || req.Opcode != mdns.OpcodeQuery || len(req.Question) != 1 {
		resp.SetRcodeFormatError(req)
		return resp
	}
	q := req.Question[0]
	name := mdns.CanonicalName(q.Name)
	if !s.inDomain(name) {
		return s.forward(req)
	}
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = len(s.cfg.Upstreams) > 0
	if q.Qclass != mdns.ClassINET {
		resp.Rcode = mdns.RcodeNotImplemented
		return resp
	}
	exists := s.resolve(resp, name, q.Qtype)
	switch {
	case !exists:
		resp.Rcode = mdns.RcodeNameError
		resp.Ns = []mdns.RR{s.soa()}
	case len(resp.Answer) == 0:
		resp.Ns = []mdns.RR{s.soa()} // NODATA
	}
	size := 512
	if opt := req.IsEdns0(); opt != nil {
		size = max(512, min(int(opt.UDPSize()), 4096))
		resp.SetEdns0(uint16(size), false)
	}
	if _, tcp := w.RemoteAddr().(*net.TCPAddr); tcp {
		size = mdns.MaxMsgSize
	}
	resp.Truncate(size)
	return resp
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
		svc, ns, ok := s.serviceName(labels[2:])
		if !ok {
			return false
		}
		found := false
		s.view.lookup(func(c *catalog) {
			sv := c.services[svcKey{"", ns, svc}]
			if sv == nil {
				return
			}
			if _, ok := sv.ports[port]; !ok {
				return
			}
			found = true
			if qtype != mdns.TypeSRV && qtype != mdns.TypeANY {
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
		return labels[0] == s.cfg.Site || s.hasNamespace(labels[0])
	case 2: // <svc>.<ns> or <ns>.<site>
		if labels[1] == s.cfg.Site && s.hasNamespace(labels[0]) {
			return true
		}
		return s.addresses(resp, name, labels[1], labels[0], "", qtype)
	case 3: // <svc>.<ns>.<site>
		if labels[2] != s.cfg.Site {
			return false
		}
		return s.addresses(resp, name, labels[1], labels[0], "", qtype)
	case 4: // <id>.<svc>.<ns>.<site>
		if labels[3] != s.cfg.Site {
			return false
		}
		return s.addresses(resp, name, labels[2], labels[1], labels[0], qtype)
	}
	return false
}

// serviceName parses <svc>.<ns>[.<site>].
func (s *Server) serviceName(l []string) (svc, ns string, ok bool) {
	switch {
	case len(l) == 2:
		return l[0], l[1], true
	case len(l) == 3 && l[2] == s.cfg.Site:
		return l[0], l[1], true
	}
	return "", "", false
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

// addresses answers A/AAAA for a service (id empty) or one instance.
func (s *Server) addresses(resp *mdns.Msg, name, ns, svc, id string, qtype uint16) bool {
	found := false
	s.view.lookup(func(c *catalog) {
		sv := c.services[svcKey{"", ns, svc}]
		if sv == nil {
			return
		}
		var ins []*instance
		if id == "" {
			found = true
			ins = passing(sv)
		} else if in, ok := sv.instances[id]; ok {
			found = true
			if in.passing {
				ins = []*instance{in}
			}
		}
		for _, in := range ins {
			if (qtype == mdns.TypeA || qtype == mdns.TypeANY) && in.addr.Is4() ||
				(qtype == mdns.TypeAAAA || qtype == mdns.TypeANY) && in.addr.Is6() {
				resp.Answer = append(resp.Answer, s.addrRR(name, in.addr))
			}
		}
	})
	return found
}

// forward sends a query outside the mesh domain upstream, keeping its
// EDNS0 options (buffer size, client subnet) as they are.
func (s *Server) forward(req *mdns.Msg) *mdns.Msg {
	if len(s.cfg.Upstreams) == 0 {
		resp := new(mdns.Msg)
		resp.SetRcode(req, mdns.RcodeRefused)
		return resp
	}
	s.m.forwarded.Inc()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	for _, up := range s.cfg.Upstreams {
		r, _, err := s.client.ExchangeContext(ctx, req, up)
		if err == nil && r.Truncated {
			tcp := &mdns.Client{Net: "tcp", Timeout: 2 * time.Second}
			r, _, err = tcp.ExchangeContext(ctx, req, up)
		}
		if err == nil {
			r.Id = req.Id
			return r
		}
		s.cfg.Logger.Debug("upstream failed", "upstream", up, "err", err)
	}
	resp := new(mdns.Msg)
	resp.SetRcode(req, mdns.RcodeServerFailure)
	return resp
}
