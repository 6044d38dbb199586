package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/agent"
	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/sitetest"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/enroll"
	"github.com/straitmesh/strait/trust/mtls"
	"github.com/straitmesh/strait/trust/svidfile"
)

type site struct {
	reg      *prometheus.Registry
	c        *controlplanetest.Cluster
	agentDir string
	socket   string
	clock    *controlplanetest.Clock
	agent    *agent.Agent
	run      *sitetest.Agent
}

// startSite starts a one-server site and an agent "node1" joined to it.
func startSite(t testing.TB, tweak ...func(*controlplane.Config)) *site {
	t.Helper()
	opts := controlplanetest.Options{Site: "dc1"}
	if len(tweak) > 0 {
		opts.Tweak = tweak[0]
	}
	return startAgent(t, controlplanetest.Start(t, 1, opts), nil, enroll.ErrRevoked)
}

// startAgent starts the agent "node1" on site c, given servers (c's
// first when nil); errors from its Run but allowed fail the test.
func startAgent(t testing.TB, c *controlplanetest.Cluster, servers []string, allowed ...error) *site {
	t.Helper()
	s := &site{c: c, clock: &controlplanetest.Clock{}, reg: prometheus.NewRegistry()}
	s.run = sitetest.StartAgent(t, c, agent.Config{Servers: servers, Now: s.clock.Now, Logger: testLogger(), Registerer: s.reg}, allowed...)
	s.agent, s.agentDir, s.socket = s.run.Agent, s.run.Config.DataDir, s.run.Config.SocketPath
	return s
}

func (s *site) register(t *testing.T, svc, agentNode string, selectors ...*apipb.Selector) {
	t.Helper()
	_, err := s.c.Client(0).Workload.CreateEntry(controlplanetest.Ctx(t), &apipb.CreateEntryRequest{Entry: &apipb.WorkloadEntry{
		Namespace: "payments", Service: svc, Agent: agentNode, Selectors: selectors,
	}})
	if err != nil {
		t.Fatalf("register %s: %v", svc, err)
	}
}

func uidSel(uid int) *apipb.Selector {
	return &apipb.Selector{Type: "unix", Key: "uid", Value: strconv.Itoa(uid)}
}

func workloadID(svc string) spiffeid.ID {
	return spiffeid.RequireFromString("spiffe://dc1.strait/ns/payments/svc/" + svc)
}

// source is an unmodified go-spiffe X509Source picking one identity, as a
// workload with that identity would see it.
func (s *site) source(t *testing.T, svc string) *workloadapi.X509Source {
	t.Helper()
	want := workloadID(svc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx,
		workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+s.socket)),
		workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, sv := range svids {
				if sv.ID == want {
					return sv
				}
			}
			return svids[0]
		}))
	if err != nil {
		t.Fatalf("go-spiffe X509Source: %v", err)
	}
	t.Cleanup(func() { src.Close() })
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		sv, err := src.GetX509SVID()
		if err != nil {
			return err
		}
		if sv.ID != want {
			return fmt.Errorf("source holds %s, want %s", sv.ID, want)
		}
		return nil
	})
	return src
}

// mtlsPair starts an mTLS echo server as "api" that only admits "web", and
// returns a dial function for "web" that only accepts "api".
func mtlsPair(t *testing.T, api, web *workloadapi.X509Source) func() error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(api, api, tlsconfig.AuthorizeID(workloadID("web"))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	clientConf := tlsconfig.MTLSClientConfig(web, web, tlsconfig.AuthorizeID(workloadID("api")))
	return func() error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), clientConf)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != "ping" {
			return errors.New("echo mismatch")
		}
		return nil
	}
}

func TestWorkloadsGetIdentitiesAndTalkMTLS(t *testing.T) {
	s := startSite(t)
	s.register(t, "api", "node1", uidSel(os.Getuid()))
	s.register(t, "web", "*", uidSel(os.Getuid()))
	api, web := s.source(t, "api"), s.source(t, "web")
	dial := mtlsPair(t, api, web)
	if err := dial(); err != nil {
		t.Fatalf("mTLS between two workloads: %v", err)
	}
	// The SVID follows the X509-SVID spec as go-spiffe checks it, and the
	// bundle is the site's.
	sv, _ := api.GetX509SVID()
	if ttl := sv.Certificates[0].NotAfter.Sub(sv.Certificates[0].NotBefore); ttl < 59*time.Minute || ttl > 62*time.Minute {
		t.Fatalf("SVID lifetime %s, want the 1h default", ttl)
	}
	b, err := api.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("dc1.strait"))
	if err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("bundle: %v", err)
	}
	// Metrics: what the agent holds, and Workload API calls (a stream is
	// counted when it ends).
	web.Close()
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		got := map[string]float64{}
		mfs, err := s.reg.Gather()
		if err != nil {
			return err
		}
		for _, mf := range mfs {
			for _, m := range mf.Metric {
				got[mf.GetName()] += m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
		if got["strait_agent_svids"] != 2 || got["strait_agent_entries"] != 2 || got["strait_agent_svids_signed_total"] < 2 || got["strait_workloadapi_requests_total"] < 1 {
			return fmt.Errorf("agent metrics %v", got)
		}
		return nil
	})
}

func TestUnregisteredCallerIsDenied(t *testing.T) {
	s := startSite(t)
	s.register(t, "api", "node1", uidSel(os.Getuid()+4242)) // not us
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+s.socket))
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("fetch by an unregistered uid: %v, want PermissionDenied", err)
	}
	// An entry registered to another agent does not reach this one.
	s.register(t, "db", "node2", uidSel(os.Getuid()))
	_, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+s.socket))
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("fetch of an entry registered to another agent: %v, want PermissionDenied", err)
	}
}

func TestSecurityHeaderRequired(t *testing.T) {
	s := startSite(t)
	s.register(t, "api", "node1", uidSel(os.Getuid()))
	conn, err := grpc.NewClient("unix://"+s.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("call without workload.spiffe.io header: %v, want InvalidArgument", err)
	}
}

// traffic runs dial in a loop until the returned stop is called, which
// reports successes and failures.
func traffic(t *testing.T, dial func() error) (ok *atomic.Int64, stop func() (int64, int64, error)) {
	ok = new(atomic.Int64)
	var failed atomic.Int64
	var lastErr atomic.Value
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			default:
			}
			if err := dial(); err != nil {
				failed.Add(1)
				lastErr.Store(err)
			} else {
				ok.Add(1)
			}
		}
	}()
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if ok.Load() < 20 {
			return errors.New("traffic not flowing yet")
		}
		return nil
	})
	return ok, func() (int64, int64, error) {
		close(quit)
		<-done
		err, _ := lastErr.Load().(error)
		return ok.Load(), failed.Load(), err
	}
}

func issuer(t *testing.T, src *workloadapi.X509Source) string {
	t.Helper()
	sv, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sv.Certificates[0].AuthorityKeyId)
}

func authorityCount(src *workloadapi.X509Source) int {
	b, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("dc1.strait"))
	if err != nil {
		return 0
	}
	return len(b.X509Authorities())
}

// TestCARotationUnderTraffic: a full CA rotation — prepare, activate,
// re-issue, drop — while two workloads keep opening mTLS connections.
// Certificate validity is real time (go-spiffe verifies with the wall
// clock), so the steps run on short real delays: 1s propagation, 3s for
// retired roots.
func TestCARotationUnderTraffic(t *testing.T) {
	s := startSite(t, func(c *controlplane.Config) {
		c.CAPropagationDelay = time.Second
		c.MaxLeafTTL = 3 * time.Second
	})
	s.register(t, "api", "node1", uidSel(os.Getuid()))
	s.register(t, "web", "node1", uidSel(os.Getuid()))
	api, web := s.source(t, "api"), s.source(t, "web")
	oldRoot := issuer(t, api)
	ok, stop := traffic(t, mtlsPair(t, api, web))
	ctx := controlplanetest.Ctx(t)
	if _, err := s.c.Client(0).Operator.RotateCA(ctx, &apipb.RotateCARequest{}); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	phases := func() []string {
		st, err := s.c.Client(0).Operator.CAStatus(ctx, &apipb.CAStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range st.Roots {
			out = append(out, r.Phase)
		}
		return out
	}
	// 1. The new root reaches the workloads' bundles before it signs.
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if n := authorityCount(api); n != 2 {
			return fmt.Errorf("workload bundle has %d roots, want 2", n)
		}
		return nil
	})
	// 2. It activates; both workloads get SVIDs from it at once.
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if issuer(t, api) == oldRoot || issuer(t, web) == oldRoot {
			return errors.New("SVIDs still from the old root")
		}
		return nil
	})
	if p := phases(); len(p) < 2 || p[0] != "active" || p[1] != "retired" {
		t.Fatalf("phases after activation %v, want [active retired]", p)
	}
	// 3. The retired root leaves the bundle.
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if n := authorityCount(api); n != 1 {
			return fmt.Errorf("workload bundle has %d roots, want 1", n)
		}
		return nil
	})
	n := ok.Load()
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if ok.Load() < n+20 {
			return errors.New("no traffic after the rotation")
		}
		return nil
	})
	good, failed, lastErr := stop()
	if failed != 0 {
		t.Fatalf("%d of %d handshakes failed during CA rotation; last: %v", failed, good+failed, lastErr)
	}
	if p := phases(); len(p) != 1 {
		t.Fatalf("phases at the end %v, want only the active root", p)
	}
	// The site itself still works on the new root: the agent and the API.
	s.register(t, "db", "node1", uidSel(os.Getuid()))
	s.source(t, "db")
	t.Logf("%d handshakes across a full CA rotation, none failed", good)
}

// TestRotationUnderTraffic: SVIDs rotate at half-life (driven by the
// agent's clock) while two workloads keep opening mTLS connections; none
// may fail.
func TestRotationUnderTraffic(t *testing.T) {
	s := startSite(t)
	s.register(t, "api", "node1", uidSel(os.Getuid()))
	s.register(t, "web", "node1", uidSel(os.Getuid()))
	api, web := s.source(t, "api"), s.source(t, "web")
	dial := mtlsPair(t, api, web)
	before, _ := api.GetX509SVID()

	var ok, failed atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := dial(); err != nil {
				failed.Add(1)
				lastErr.Store(err)
			} else {
				ok.Add(1)
			}
		}
	}()
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if ok.Load() < 20 {
			return errors.New("traffic not flowing yet")
		}
		return nil
	})
	s.clock.Advance(31 * time.Minute) // past half of the 1h SVIDs
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		a, _ := api.GetX509SVID()
		w, _ := web.GetX509SVID()
		if a.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) == 0 {
			return errors.New("api SVID not rotated yet")
		}
		if w.Certificates[0].NotBefore.Before(a.Certificates[0].NotBefore.Add(-time.Minute)) {
			return errors.New("web SVID not rotated yet")
		}
		return nil
	})
	n := ok.Load()
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if ok.Load() < n+20 {
			return errors.New("no traffic after rotation")
		}
		return nil
	})
	close(stop)
	<-done
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d handshakes failed across rotation; last: %v", f, f+ok.Load(), lastErr.Load())
	}
	t.Logf("%d handshakes across rotation, none failed", ok.Load())
}

func TestJWTSVIDs(t *testing.T) {
	s := startSite(t)
	s.register(t, "api", "node1", uidSel(os.Getuid()))
	addr := workloadapi.WithAddr("unix://" + s.socket)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var sv *jwtsvid.SVID
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		var err error
		sv, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "payments-db"}, addr)
		return err
	})
	if sv.ID != workloadID("api") || len(sv.Audience) != 1 || sv.Audience[0] != "payments-db" {
		t.Fatalf("JWT-SVID for %s audience %v", sv.ID, sv.Audience)
	}
	if ttl := time.Until(sv.Expiry); ttl <= 0 || ttl > 5*time.Minute {
		t.Fatalf("JWT-SVID expires in %s, want within 5m", ttl)
	}
	token := sv.Marshal()
	got, err := workloadapi.ValidateJWTSVID(ctx, token, "payments-db", addr)
	if err != nil || got.ID != sv.ID {
		t.Fatalf("ValidateJWTSVID: %v %v", got, err)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, token, "someone-else", addr); err == nil {
		t.Fatal("a JWT-SVID validated for an audience it was not issued to")
	}
	tampered := token[:len(token)-4] + "AAAA"
	if _, err := workloadapi.ValidateJWTSVID(ctx, tampered, "payments-db", addr); err == nil {
		t.Fatal("a tampered JWT-SVID validated")
	}
	// Anyone holding the JWT bundle can validate it independently.
	bundles, err := workloadapi.FetchJWTBundles(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(token, bundles, []string{"payments-db"}); err != nil {
		t.Fatalf("validate with the JWT bundle: %v", err)
	}
	// A second fetch for the same audience is served from the agent's cache.
	again, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "payments-db"}, addr)
	if err != nil || again.Marshal() != token {
		t.Fatalf("second fetch: %v (same token: %v)", err, again != nil && again.Marshal() == token)
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("STRAIT_TEST_LOGS") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// TestAgentCannotSignOthersIdentities calls the servers directly with the
// agent's own SVID, as a compromised agent would.
func TestAgentCannotSignOthersIdentities(t *testing.T) {
	s := startSite(t)
	s.register(t, "api", "node1", uidSel(os.Getuid()))
	s.register(t, "db", "node2", uidSel(os.Getuid()))
	s.source(t, "api") // the agent is up and holds its SVID
	var dbID string
	list, err := s.c.Client(0).Workload.ListEntries(controlplanetest.Ctx(t), &apipb.ListEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list.Entries {
		if e.Service == "db" {
			dbID = e.Id
		}
	}
	cl := s.agentClient(t)
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	_, err = cl.Identity.SignX509SVIDs(controlplanetest.Ctx(t), &apipb.SignRequest{Items: []*apipb.SignRequest_Item{{EntryId: dbID, Csr: csr}}})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("signing an entry of another agent: %v, want PermissionDenied", err)
	}
	_, err = cl.Identity.SignJWTSVID(controlplanetest.Ctx(t), &apipb.SignJWTRequest{EntryId: dbID, Audience: []string{"x"}})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("JWT for an entry of another agent: %v, want PermissionDenied", err)
	}
	// A malformed CSR for its own entry is refused too.
	apiEntry := ""
	for _, e := range list.Entries {
		if e.Service == "api" {
			apiEntry = e.Id
		}
	}
	_, err = cl.Identity.SignX509SVIDs(controlplanetest.Ctx(t), &apipb.SignRequest{Items: []*apipb.SignRequest_Item{{EntryId: apiEntry, Csr: []byte("garbage")}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("malformed CSR: %v, want InvalidArgument", err)
	}
	// Workload-facing calls are not open to agents' peers: a management
	// token cannot call the agent API.
	if _, err := s.c.Client(0).Identity.SignX509SVIDs(controlplanetest.Ctx(t), &apipb.SignRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("agent API with a token instead of an agent SVID: %v, want PermissionDenied", err)
	}
}

// agentClient connects to the servers with the agent's SVID from its data dir.
func (s *site) agentClient(t *testing.T) *apiclient.Client {
	t.Helper()
	chain, key, bundle, err := svidfile.Read(filepath.Join(s.agentDir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	id := mtls.NewIdentity(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("dc1.strait"), bundle), nil)
	if err := id.SetSVID(chain, key); err != nil {
		t.Fatal(err)
	}
	cl, err := apiclient.Dial(apiclient.Config{Addr: s.c.Nodes[0].Addr, CA: bundle, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// TestAgentSurvivesServerLoss: an agent knowing all three servers keeps
// issuing and rotating when the server it talks to dies.
func TestAgentSurvivesServerLoss(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{Site: "dc1"})
	var addrs []string
	for _, n := range c.Nodes {
		addrs = append(addrs, n.Addr)
	}
	s := startAgent(t, c, addrs)
	s.register(t, "api", "node1", uidSel(os.Getuid()))
	src := s.source(t, "api")
	before, _ := src.GetX509SVID()

	// pick_first talks to the first address: stop that server.
	if err := c.Nodes[0].Stop(); err != nil {
		t.Fatal(err)
	}
	// A new entry still reaches the agent, and rotation still works.
	cl := c.Client(c.Leader())
	_, err := cl.Workload.CreateEntry(controlplanetest.Ctx(t), &apipb.CreateEntryRequest{Entry: &apipb.WorkloadEntry{
		Namespace: "payments", Service: "web", Agent: "node1", Selectors: []*apipb.Selector{uidSel(os.Getuid())}}})
	if err != nil {
		t.Fatal(err)
	}
	s.source(t, "web")
	s.clock.Advance(31 * time.Minute)
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		now, err := src.GetX509SVID()
		if err != nil {
			return err
		}
		if now.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) == 0 {
			return errors.New("not rotated after losing a server")
		}
		return nil
	})
}

func TestAgentRevocation(t *testing.T) {
	s := startSite(t)
	s.register(t, "api", "node1", uidSel(os.Getuid()))
	s.source(t, "api")
	ctx := controlplanetest.Ctx(t)
	mgmt := s.c.Client(0)

	// A second agent claiming the same node name is refused while the
	// first is live.
	tok, err := mgmt.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_AGENT})
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := os.MkdirTemp("", "sa")
	t.Cleanup(func() { os.RemoveAll(dir) })
	dup, err := agent.New(agent.Config{Node: "node1", Servers: []string{s.c.Nodes[0].Addr}, JoinToken: tok.Secret,
		DataDir: t.TempDir(), SocketPath: filepath.Join(dir, "dup.sock"), Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := dup.Run(ctx); err == nil || !strings.Contains(err.Error(), "already joined") {
		t.Fatalf("duplicate agent: %v", err)
	}

	list, err := mgmt.Workload.ListAgents(ctx, &apipb.ListAgentsRequest{})
	if err != nil || len(list.Agents) != 1 || list.Agents[0].Node != "node1" || list.Agents[0].Revoked {
		t.Fatalf("agents %v %v", list, err)
	}
	if _, err := mgmt.Workload.RevokeAgent(ctx, &apipb.RevokeAgentRequest{Node: "node1"}); err != nil {
		t.Fatal(err)
	}
	// Every call with the revoked agent's SVID is refused at once.
	key, _ := ca.NewKey()
	csr, _ := ca.NewCSR(key)
	_, err = s.agentClient(t).Identity.RenewAgent(ctx, &apipb.RenewAgentRequest{Csr: csr})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked agent renewing: %v, want PermissionDenied", err)
	}
	if _, err := mgmt.Workload.RevokeAgent(ctx, &apipb.RevokeAgentRequest{Node: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("revoking an unknown agent: %v, want NotFound", err)
	}
}

// TestRevokedAgentStopsAndRejoins: a running agent that is revoked stops
// (rather than retrying forever) and says why and what to do; started
// again without a token it says it was revoked; with a new token it joins
// again from the same data dir.
func TestRevokedAgentStopsAndRejoins(t *testing.T) {
	s := startSite(t)
	s.register(t, "api", "node1", uidSel(os.Getuid()))
	s.source(t, "api")
	ctx := controlplanetest.Ctx(t)
	mgmt := s.c.Client(0)
	if _, err := mgmt.Workload.RevokeAgent(ctx, &apipb.RevokeAgentRequest{Node: "node1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.run.Exited():
	case <-time.After(20 * time.Second):
		t.Fatal("the revoked agent still runs 20s after its revocation")
	}
	if !errors.Is(s.run.Err(), enroll.ErrRevoked) || !strings.Contains(s.run.Err().Error(), "strait agent revoke node1") ||
		!strings.Contains(s.run.Err().Error(), "--join-token") {
		t.Fatalf("revoked agent's error: %v", s.run.Err())
	}

	// Started again on the same data dir: without a token it says it was
	// revoked; with a new one it joins again and serves.
	sockDir, _ := os.MkdirTemp("", "sa")
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	again := func(token string) (*agent.Agent, string) {
		sock := filepath.Join(sockDir, fmt.Sprintf("a%d.sock", len(token)))
		a, err := agent.New(agent.Config{Node: "node1", Servers: []string{s.c.Nodes[0].Addr}, JoinToken: token,
			DataDir: s.agentDir, SocketPath: sock, Logger: testLogger(), CheckInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return a, sock
	}
	a, _ := again("")
	if err := a.Run(ctx); err == nil || !strings.Contains(err.Error(), "was revoked") || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("restart without a token: %v", err)
	}
	tok, err := mgmt.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_AGENT})
	if err != nil {
		t.Fatal(err)
	}
	a, sock := again(tok.Secret)
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("re-joined agent: %v", err)
		}
	})
	s.socket = sock
	if sv, err := s.source(t, "api").GetX509SVID(); err != nil || sv.ID != workloadID("api") {
		t.Fatalf("after re-joining: %v %v", sv, err)
	}
}
