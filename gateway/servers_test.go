package gateway_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/internal/wan"
)

// TestGatewayOutlivesItsServer: site B runs three servers and its gateway
// talks to a follower first. The gateway's heartbeats, which the follower
// hands on to the leader, keep it in the catalog (so A learns of it); then
// that follower stops under cross-site load: the gateway moves its xDS
// stream and heartbeats to another server, and no connection fails while
// it does.
func TestGatewayOutlivesItsServer(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	a, b := startSite(t, "site-a", w), startSiteN(t, "site-b", w, 3)
	federate(t, a, b)
	f := b.Follower()
	b.gwServers = []string{b.Nodes[f].Addr}
	for i, n := range b.Nodes {
		if i != f {
			b.gwServers = append(b.gwServers, n.Addr)
		}
	}
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	port := echoServer(t)
	register(t, b, "payments", "api", "api-1", port, apipb.Protocol_PROTOCOL_TCP)
	exportTo(t, b, "payments", "api", "site-a")
	allow(t, b, "site-a", "payments/api")
	addr := reachable(t, a, "api.payments.site-b.mesh", port, 20*time.Second)
	calls := func(n int) {
		t.Helper()
		for i := range n {
			if got, err := echo(addr, fmt.Sprint("probe-", i)); err != nil || got != fmt.Sprintf("probe-%d\n", i) {
				t.Fatalf("call %d: %q %v", i, got, err)
			}
		}
	}
	stop := load(addr, 4)
	calls(20) // load before the loss
	streams := testutil.ToFloat64(b.metric(t, "strait_gateway_xds_streams_total"))
	if err := b.Nodes[f].Stop(); err != nil {
		t.Fatal(err)
	}
	// The gateway moves to a live server: a new xDS stream delivers its
	// configuration, and heartbeats are accepted again.
	beats := heartbeats(t, b, "ok")
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		if n := testutil.ToFloat64(b.metric(t, "strait_gateway_xds_streams_total")); n <= streams {
			return fmt.Errorf("no new xDS stream yet (%v)", n)
		}
		if n := heartbeats(t, b, "ok"); n < beats+2 {
			return fmt.Errorf("%v heartbeats accepted since the loss", n-beats)
		}
		return nil
	})
	calls(20) // load after it
	ok, failed := stop()
	if ok == 0 {
		t.Fatal("no connection went through")
	}
	for _, err := range failed {
		t.Errorf("a connection failed while the gateway changed servers: %v", err)
	}
	t.Logf("%d connections, %d failed", ok, len(failed))
}

// heartbeats is the gateway's count of heartbeats with result.
func heartbeats(t *testing.T, s *site, result string) float64 {
	t.Helper()
	fams, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "strait_gateway_heartbeats_total" {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
