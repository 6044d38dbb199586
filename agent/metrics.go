package agent

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/straitmesh/strait/internal/metricsserver"
)

// metrics: gauges read from the agent at scrape time, and counters.
type metrics struct {
	a                   *Agent
	signed              prometheus.Counter
	entries, svids, due *prometheus.Desc
	agentSVIDExpiry     *prometheus.Desc
}

func newMetrics(a *Agent, reg prometheus.Registerer) *metrics {
	m := &metrics{
		a: a,
		signed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "strait_agent_svids_signed_total", Help: "Workload X.509-SVIDs obtained from the servers (first issue and renewals).",
		}),
		entries:         prometheus.NewDesc("strait_agent_entries", "Workload entries this agent may issue.", nil, nil),
		svids:           prometheus.NewDesc("strait_agent_svids", "Workload X.509-SVIDs held.", nil, nil),
		due:             prometheus.NewDesc("strait_agent_svids_due", "Workload SVIDs missing or due for renewal.", nil, nil),
		agentSVIDExpiry: prometheus.NewDesc("strait_agent_svid_expiry_seconds", "Seconds until the agent's own SVID expires.", nil, nil),
	}
	if reg != nil {
		reg.MustRegister(m.signed, m)
	}
	return m
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.entries
	ch <- m.svids
	ch <- m.due
	ch <- m.agentSVIDExpiry
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	st := m.a.Status()
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	g(m.entries, float64(st.Entries))
	g(m.svids, float64(st.SVIDs))
	g(m.due, float64(st.Due))
	if m.a.ident != nil {
		if sv := m.a.ident.SVID(); sv != nil {
			g(m.agentSVIDExpiry, time.Until(sv.Certificates[0].NotAfter).Seconds())
		}
	}
}

// serveMetrics serves /metrics until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context) error {
	return metricsserver.Serve(ctx, a.cfg.MetricsAddr, a.cfg.Gatherer)
}
