package xds_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/straitmesh/strait/controlplane/xds"
)

// TestRejectedResourcesAreNotResent: a subscriber that NACKs everything
// gets each version once, not a resend storm, and a new version still
// reaches it. The server runs for real on loopback; the caller check is
// a stand-in for the API's mTLS authentication (tested in controlplane).
func TestRejectedResourcesAreNotResent(t *testing.T) {
	in := inputs(t)
	var mu sync.Mutex
	changed := make(chan struct{})
	reg := prometheus.NewRegistry()
	s := xds.New(xds.Config{
		Inputs: func() (xds.Inputs, error) { mu.Lock(); defer mu.Unlock(); return in, nil },
		Changed: func() []<-chan struct{} {
			mu.Lock()
			defer mu.Unlock()
			return []<-chan struct{}{changed}
		},
		Caller:     func(context.Context) (xds.Subscriber, bool) { return xds.Subscriber{Gateway: "gw"}, true },
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer: reg,
	})
	g := grpc.NewServer()
	s.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go s.Run(ctx)

	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "gateway/gw"}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	versions := make(chan string, 1000)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			versions <- resp.VersionInfo
			stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce,
				ErrorDetail: &status.Status{Code: 3, Message: "rejected by the test"}})
		}
	}()
	first := <-versions
	// Nothing more while nothing changes (a storm would send hundreds).
	select {
	case v := <-versions:
		t.Fatalf("version %s sent again after a NACK of %s", v, first)
	case <-time.After(time.Second):
	}
	// A change: the next version arrives, once.
	mu.Lock()
	in.Imports[0].Instances = in.Imports[0].Instances[:1]
	close(changed)
	changed = make(chan struct{})
	mu.Unlock()
	select {
	case v := <-versions:
		if v == first {
			t.Fatalf("got version %s again, want a new one", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a new version did not reach the subscriber that rejected the last")
	}
	select {
	case v := <-versions:
		t.Fatalf("version %s sent again after its NACK", v)
	case <-time.After(500 * time.Millisecond):
	}
	if n := nacks(t, reg); n != 2 {
		t.Fatalf("%v NACKs counted, want 2", n)
	}
}

func nacks(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "strait_xds_nacks_total" {
			return f.Metric[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no strait_xds_nacks_total")
	return 0
}
