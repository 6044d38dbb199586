package controlplane

import (
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/straitmesh/strait/federation/peering"
)

// metrics exports Raft and catalog state. Gauges are read from Raft and the
// store at scrape time, so they cost nothing between scrapes.
type metrics struct {
	s     *Server
	apply prometheus.Histogram

	leader, term, commit, applied, lastContact, peers, services, instances *prometheus.Desc
	halted                                                                 *prometheus.Desc
	peerUp, peerBundleAge, importContact, imported                         *prometheus.Desc
}

func newMetrics(s *Server, reg prometheus.Registerer) *metrics {
	m := &metrics{
		s: s,
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "strait_raft_apply_duration_seconds", Help: "Time from proposing a command to its commit and apply on the leader.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
		}),
		leader:      prometheus.NewDesc("strait_raft_leader", "1 if this server is the Raft leader.", nil, nil),
		term:        prometheus.NewDesc("strait_raft_term", "Current Raft term.", nil, nil),
		commit:      prometheus.NewDesc("strait_raft_commit_index", "Raft commit index.", nil, nil),
		applied:     prometheus.NewDesc("strait_raft_applied_index", "Raft index applied to the state machine.", nil, nil),
		lastContact: prometheus.NewDesc("strait_raft_last_contact_seconds", "Time since a follower last heard from the leader.", nil, nil),
		peers:       prometheus.NewDesc("strait_raft_peers", "Servers in the Raft configuration.", []string{"suffrage"}, nil),
		halted: prometheus.NewDesc("strait_state_halted",
			"1 if this server stopped applying the Raft log at a command in a newer format than it understands (upgrade it).", nil, nil),
		services:  prometheus.NewDesc("strait_catalog_services", "Services in the catalog.", nil, nil),
		instances: prometheus.NewDesc("strait_catalog_instances", "Service instances in the catalog.", nil, nil),
		peerUp: prometheus.NewDesc("strait_federation_peer_up",
			"1 if the peer's replication stream is alive or the last fetch of its bundle succeeded.", []string{"peer"}, nil),
		peerBundleAge: prometheus.NewDesc("strait_federation_peer_bundle_age_seconds",
			"Time since the peer site's bundle was last fetched successfully.", []string{"peer"}, nil),
		importContact: prometheus.NewDesc("strait_federation_import_contact_age_seconds",
			"Time since contact with the peer was last committed (imports are stale beyond peer_stale_after).", []string{"peer"}, nil),
		imported: prometheus.NewDesc("strait_federation_imported_instances",
			"Instances imported from the peer.", []string{"peer"}, nil),
	}
	reg.MustRegister(m.apply, m)
	return m
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.leader, m.term, m.commit, m.applied, m.lastContact, m.halted, m.peers, m.services, m.instances, m.peerUp, m.peerBundleAge, m.importContact, m.imported} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	r := m.s.raft
	if r == nil {
		return
	}
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	st := m.s.Status()
	leader := 0.0
	if r.State() == raft.Leader {
		leader = 1
	}
	g(m.leader, leader)
	halted := 0.0
	if m.s.store.Halted() != nil {
		halted = 1
	}
	g(m.halted, halted)
	g(m.term, float64(st.Term))
	g(m.commit, float64(st.CommitIndex))
	g(m.applied, float64(st.AppliedIndex))
	g(m.lastContact, st.LastContact.AsDuration().Seconds())
	voters, nonvoters := 0, 0
	for _, p := range st.Peers {
		if p.Voter {
			voters++
		} else {
			nonvoters++
		}
	}
	g(m.peers, float64(voters), "voter")
	g(m.peers, float64(nonvoters), "nonvoter")
	g(m.services, float64(st.Services))
	g(m.instances, float64(st.Instances))
	for _, f := range m.s.store.ForeignBundles() {
		if f.PeerName == "" {
			continue
		}
		up := 0.0
		if (f.LastAttempt != nil && f.LastError == "") || peering.ReplicationFresh(m.s.store, f, m.s.cfg.Now(), m.s.cfg.PeerStaleAfter) {
			up = 1
		}
		g(m.peerUp, up, f.PeerName)
		if f.LastSuccess != nil {
			g(m.peerBundleAge, time.Since(f.LastSuccess.AsTime()).Seconds(), f.PeerName)
		}
		if p, ok := m.s.store.PeerImport(f.PeerName); ok && p.LastContact != nil {
			g(m.importContact, m.s.cfg.Now().Sub(p.LastContact.AsTime()).Seconds(), f.PeerName)
		}
		_, n := m.s.store.ImportCounts(f.PeerName)
		g(m.imported, float64(n), f.PeerName)
	}
}
