package gateway_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"

	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/proxyless"
)

// TestProxylessGRPCThroughGateways: a grpc-go client in site A, with only
// an xDS bootstrap naming A's server and its SVID files, calls
// xds:///echo.demo.site-b.mesh. Strait's xDS server resolves the name to
// the service's virtual IP and sets mTLS from end to end; the call
// crosses both gateways; B's service sees the client's own SVID; and the
// client rejects none of the resources it receives.
func TestProxylessGRPCThroughGateways(t *testing.T) {
	w := wan.New(0)
	t.Cleanup(func() { w.Close() })
	regA := prometheus.NewRegistry()
	a := startSite(t, "site-a", w, func(c *controlplane.Config) { c.Registerer, c.Gatherer = regA, regA })
	b := startSite(t, "site-b", w)
	federate(t, a, b)
	a.startGateway(t, "gw-a", nil)
	b.startGateway(t, "gw-b", nil)
	ctx := controlplanetest.Ctx(t)
	caller, callee := "spiffe://site-a.strait/ns/web/svc/front", "spiffe://site-b.strait/ns/demo/svc/echo"
	bundles := x509bundle.NewSet(a.Nodes[0].Server.Bundle(), b.Nodes[0].Server.Bundle())

	// B's gRPC service: mTLS with its own SVID, accepting only A's
	// web/front, and telling the caller who it saw.
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconfig.MTLSServerConfig(workloadSVID(t, b, callee), bundles,
		tlsconfig.AuthorizeID(spiffeid.RequireFromString(caller))))),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if p, ok := peer.FromContext(ctx); ok {
				if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
					id, _ := x509svid.IDFromCert(ti.State.PeerCertificates[0])
					grpc.SetHeader(ctx, metadata.Pairs("caller", id.String()))
				}
			}
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	serve := func(s *grpc.Server) int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(ln)
		t.Cleanup(s.Stop)
		return ln.Addr().(*net.TCPAddr).Port
	}
	port := serve(srv)
	register(t, b, "demo", "echo", "echo-1", port, apipb.Protocol_PROTOCOL_GRPC)
	// An imposter: demo/other's instance presents echo's SVID, which a
	// client of demo/other must refuse.
	imposter := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconfig.MTLSServerConfig(workloadSVID(t, b, callee), bundles, tlsconfig.AuthorizeAny()))))
	healthpb.RegisterHealthServer(imposter, health.NewServer())
	register(t, b, "demo", "other", "other-1", serve(imposter), apipb.Protocol_PROTOCOL_GRPC)
	for _, svc := range []string{"echo", "other"} {
		exportTo(t, b, "demo", svc, "site-a")
	}
	allow(t, b, "site-a", "demo/*")

	// A's client: its SVID and the bundles as files, and a bootstrap.
	dir := t.TempDir()
	var maps []*spiffebundle.Bundle
	for _, s := range []*site{a, b} {
		xb := s.Nodes[0].Server.Bundle()
		maps = append(maps, spiffebundle.FromX509Authorities(xb.TrustDomain(), xb.X509Authorities()))
	}
	if err := proxyless.WriteFiles(dir, workloadSVID(t, a, caller), maps); err != nil {
		t.Fatal(err)
	}
	boot, err := proxyless.Bootstrap([]string{a.Nodes[0].Addr}, "web/front-1", dir)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := xds.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		t.Fatalf("grpc-go rejects the bootstrap: %v\n%s", err, boot)
	}
	// Insecure is only the fallback for clusters without security: these
	// have it, and B's service would refuse a call without mTLS anyway.
	tc, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///echo.demo.site-b.mesh", grpc.WithTransportCredentials(tc), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var header metadata.MD
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.Header(&header))
		if err != nil {
			return err
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("status %v", resp.Status)
		}
		return nil
	})
	if got := header.Get("caller"); len(got) != 1 || got[0] != caller {
		t.Fatalf("B's service saw %v, want the client's own SVID %s", got, caller)
	}
	// The call crosses the gateways: the client's connection is open
	// through A's gateway and B's.
	for _, s := range []*site{a, b} {
		if n := testutil.ToFloat64(s.metric(t, "strait_gateway_active_connections")); n == 0 {
			t.Fatal("no connection open through a gateway")
		}
	}
	// The port number form of the name resolves too.
	conn2, err := grpc.NewClient(fmt.Sprintf("xds:///echo.demo.site-b.mesh:%d", port), grpc.WithTransportCredentials(tc), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn2).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("xds:///echo.demo.site-b.mesh:%d: %v", port, err)
	}
	// The imposter is refused: the client accepts only demo/other's SVID.
	conn3, err := grpc.NewClient("xds:///other.demo.site-b.mesh", grpc.WithTransportCredentials(tc), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	defer conn3.Close()
	cctx3, cancel3 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel3()
	if _, err := healthpb.NewHealthClient(conn3).Check(cctx3, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err == nil {
		t.Fatal("the client accepted a server presenting another service's SVID")
	}
	if n := testutil.ToFloat64(&sumOf{regA, "strait_xds_nacks_total"}); n != 0 {
		t.Fatalf("the grpc-go client rejected %v xDS responses", n)
	}
}
