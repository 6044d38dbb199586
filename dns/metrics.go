package dns

import (
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	s         *Server
	fastA     prometheus.Counter // queries{A, NOERROR}, resolved once
	fastAAAA  prometheus.Counter
	queries   *prometheus.CounterVec
	latency   prometheus.Histogram
	forwarded prometheus.Counter
	// refusedBy counts queries to forward that were refused, by reason.
	refusedBy          *prometheus.CounterVec
	refusals           [numRefusalReasons]prometheus.Counter
	truncatedMesh      prometheus.Counter
	truncatedForwarded prometheus.Counter
	services           *prometheus.Desc
	instances          *prometheus.Desc
}

func newMetrics(s *Server, reg prometheus.Registerer) *metrics {
	m := &metrics{
		s: s,
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strait_dns_queries_total", Help: "DNS queries by type and response code.",
		}, []string{"qtype", "rcode"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "strait_dns_request_duration_seconds", Help: "Time to answer a DNS query (forwarded ones included).",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10),
		}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "strait_dns_forwarded_total", Help: "Queries outside the mesh domain sent upstream.",
		}),
		refusedBy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strait_dns_forward_refused_total",
			Help: "Queries outside the mesh domain not forwarded, by reason: acl (client not in the recursion ACL; REFUSED), concurrency (every forwarding slot taken; SERVFAIL), no_upstream (none configured; REFUSED).",
		}, []string{"reason"}),
		services:  prometheus.NewDesc("strait_dns_view_services", "Services in the DNS view.", nil, nil),
		instances: prometheus.NewDesc("strait_dns_view_instances", "Instances in the DNS view.", nil, nil),
	}
	truncated := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "strait_dns_truncated_total",
		Help: "UDP replies cut to the client's size, with TC set, by answer: mesh or forwarded.",
	}, []string{"answer"})
	m.truncatedMesh = truncated.WithLabelValues("mesh")
	m.truncatedForwarded = truncated.WithLabelValues("forwarded")
	for r, name := range refusalReasons {
		m.refusals[r] = m.refusedBy.WithLabelValues(name)
	}
	m.fastA = m.queries.WithLabelValues("A", "NOERROR")
	m.fastAAAA = m.queries.WithLabelValues("AAAA", "NOERROR")
	if reg != nil {
		reg.MustRegister(m.queries, m.latency, m.forwarded, m.refusedBy, truncated, m)
	}
	return m
}

// Reasons for refusing to forward (the reason label).
type refusalReason int

const (
	refusedACL refusalReason = iota
	refusedConcurrency
	refusedNoUpstream
	numRefusalReasons
)

var refusalReasons = [numRefusalReasons]string{"acl", "concurrency", "no_upstream"}

func (m *metrics) refused(r refusalReason) { m.refusals[r].Inc() }

// observeFast counts a positive A or AAAA answer of the fast path.
func (m *metrics) observeFast(qtype uint16, d time.Duration) {
	if qtype == mdns.TypeA {
		m.fastA.Inc()
	} else {
		m.fastAAAA.Inc()
	}
	m.latency.Observe(d.Seconds())
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.services; ch <- m.instances }

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	svcs, insts := m.s.view.sizes()
	ch <- prometheus.MustNewConstMetric(m.services, prometheus.GaugeValue, float64(svcs))
	ch <- prometheus.MustNewConstMetric(m.instances, prometheus.GaugeValue, float64(insts))
}

// knownTypes bounds the qtype label.
var knownTypes = map[uint16]bool{mdns.TypeA: true, mdns.TypeAAAA: true, mdns.TypeSRV: true, mdns.TypePTR: true,
	mdns.TypeSOA: true, mdns.TypeNS: true, mdns.TypeANY: true, mdns.TypeTXT: true, mdns.TypeCNAME: true}

func (m *metrics) observe(qtype uint16, rcode int, d time.Duration) {
	t := "other"
	if knownTypes[qtype] {
		t = mdns.TypeToString[qtype]
	}
	m.queries.WithLabelValues(t, mdns.RcodeToString[rcode]).Inc()
	m.latency.Observe(d.Seconds())
}
