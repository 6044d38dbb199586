package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/straitmesh/strait/internal/tunnelmux"
)

type metrics struct {
	conns, bytes, denials, handshakes, heartbeats *prometheus.CounterVec
	egressRefusals, tunnelRefusals                *prometheus.CounterVec
	active, egressListeners                       *prometheus.GaugeVec
	connectTime                                   *prometheus.HistogramVec
	handshakeTime                                 prometheus.Histogram
	nacks, xdsStreams                             prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, budget *tunnelmux.Budget) *metrics {
	m := &metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_gateway_connections_total",
			Help: "Connections by direction (egress: from local clients; ingress: from peers; control: peers' servers passed through to this site's), service, peer trust domain and result."},
			[]string{"direction", "service", "peer", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_gateway_bytes_total",
			Help: "Bytes carried (both ways) by direction, service and peer trust domain."}, []string{"direction", "service", "peer"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_gateway_authorization_denials_total",
			Help: "Streams from peers refused by the intentions, or because the service is not exported to the peer."}, []string{"service", "peer"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_gateway_tunnel_handshakes_total",
			Help: "TLS handshakes of tunnels between gateways, by side and result."}, []string{"side", "result"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "strait_gateway_active_connections",
			Help: "Connections in progress by direction."}, []string{"direction"}),
		connectTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "strait_gateway_connect_duration_seconds",
			Help: "Time from accepting a connection to being connected upstream.", Buckets: prometheus.ExponentialBuckets(0.0001, 3, 12)}, []string{"direction"}),
		handshakeTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "strait_gateway_tunnel_handshake_seconds",
			Help: "Time to dial and handshake a tunnel.", Buckets: prometheus.ExponentialBuckets(0.0001, 3, 12)}),
		nacks: prometheus.NewCounter(prometheus.CounterOpts{Name: "strait_gateway_xds_rejected_total", Help: "xDS responses rejected."}),
		xdsStreams: prometheus.NewCounter(prometheus.CounterOpts{Name: "strait_gateway_xds_streams_total",
			Help: "ADS streams to a server that delivered a configuration (more than one: the gateway reconnected)."}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_gateway_heartbeats_total",
			Help: "Heartbeats that keep the gateway in its site's catalog, by result (ok, error)."}, []string{"result"}),
	}
	m.egressListeners = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "strait_gateway_egress_listeners",
		Help: "Egress listeners of the configuration by state: open, over_limit (not opened: beyond the gateway's listener limit), bind_failed."},
		[]string{"state"})
	m.egressRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_gateway_egress_listener_refusals_total",
		Help: "Egress listeners not opened, by cause (limit: beyond the gateway's listener limit; bind: the address could not be bound), each counted once until it changes."},
		[]string{"cause"})
	m.tunnelRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_gateway_tunnel_stream_refusals_total",
		Help: "Tunnel streams reset by a bound, by cause (streams_per_tunnel, streams_per_peer, accept_backlog, buffer_budget)."},
		[]string{"cause"})
	reg.MustRegister(m.conns, m.bytes, m.denials, m.handshakes, m.heartbeats, m.active, m.connectTime, m.handshakeTime, m.nacks, m.xdsStreams,
		m.egressListeners, m.egressRefusals, m.tunnelRefusals,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strait_gateway_tunnel_buffered_bytes",
			Help: "Bytes received on tunnels and not yet passed on, across all streams (bounded by the tunnel buffer budget)."},
			func() float64 { return float64(budget.Buffered()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strait_gateway_tunnel_buffer_budget_bytes",
			Help: "The tunnel buffer budget: the most bytes received on tunnels and not yet passed on."},
			func() float64 { return float64(budget.Limit()) }))
	return m
}
