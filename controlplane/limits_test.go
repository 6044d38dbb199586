package controlplane_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/enroll"
	"github.com/straitmesh/strait/trust/mtls"
)

// clientAs dials c's first server presenting the SVID chain of key.
func clientAs(t *testing.T, c *controlplanetest.Cluster, chain []*x509.Certificate, key crypto.Signer) *apiclient.Client {
	t.Helper()
	roots := c.Nodes[0].Server.Bundle().X509Authorities()
	id := mtls.NewIdentity(x509bundle.FromX509Authorities(c.Nodes[0].Server.TrustDomain(), roots), nil)
	if err := id.SetSVID(chain, key); err != nil {
		t.Fatal(err)
	}
	cl, err := apiclient.Dial(apiclient.Config{Addr: c.Nodes[0].Addr, CA: roots, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// joinAgent joins an agent named node with a real agent token and returns
// a client that calls as that agent.
func joinAgent(t *testing.T, c *controlplanetest.Cluster, token, node string) *apiclient.Client {
	t.Helper()
	key, csr := newCSR(t)
	resp, err := c.ClientWithToken(0, token).Identity.AgentJoin(controlplanetest.Ctx(t), &apipb.AgentJoinRequest{Node: node, Csr: csr})
	if err != nil {
		t.Fatalf("agent join %s: %v", node, err)
	}
	chain, err := enroll.ParseDERs(resp.Svid)
	if err != nil {
		t.Fatal(err)
	}
	return clientAs(t, c, chain, key)
}

// signingAgents joins two agents to c, "greedy" (with a workload entry)
// and "calm", and returns them with a full batch of signing requests for
// greedy's entry and a CSR.
func signingAgents(t *testing.T, c *controlplanetest.Cluster) (greedy, calm *apiclient.Client, full *apipb.SignRequest, csr []byte) {
	t.Helper()
	ctx := controlplanetest.Ctx(t)
	tok, err := c.Client(0).ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_AGENT, MaxUses: 2})
	if err != nil {
		t.Fatal(err)
	}
	greedy, calm = joinAgent(t, c, tok.Secret, "greedy"), joinAgent(t, c, tok.Secret, "calm")
	entry, err := c.Client(0).Workload.CreateEntry(ctx, &apipb.CreateEntryRequest{Entry: &apipb.WorkloadEntry{
		Namespace: "payments", Service: "batch", Agent: "greedy",
		Selectors: []*apipb.Selector{{Type: "unix", Key: "uid", Value: strconv.Itoa(os.Getuid())}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	csr, _ = ca.NewCSR(key)
	full = &apipb.SignRequest{}
	for range api.MaxSignBatch {
		full.Items = append(full.Items, &apipb.SignRequest_Item{EntryId: entry.Entry.Id, Csr: csr})
	}
	return greedy, calm, full, csr
}

// TestSigningSharePerCaller: an agent asking for SVIDs in big batches, in
// a loop, is refused once over its share of the signing rate, while
// another agent's renewals go through.
func TestSigningSharePerCaller(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "dc1", Tweak: func(cfg *controlplane.Config) {
		cfg.SignRatePerCaller = 5 // bursts of a full batch, then 5/s
	}})
	ctx := controlplanetest.Ctx(t)
	greedy, calm, full, csr := signingAgents(t, c)

	var wg sync.WaitGroup
	var greedyErr error
	signed := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 5 { // bounded: the first batch spends the burst
			if _, greedyErr = greedy.Identity.SignX509SVIDs(ctx, full); greedyErr != nil {
				return
			}
			signed++
		}
	}()
	for i := range 3 {
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		_, err := calm.Identity.RenewAgent(rctx, &apipb.RenewAgentRequest{Csr: csr})
		cancel()
		if err != nil {
			t.Fatalf("renewal %d of the other agent: %v", i, err)
		}
	}
	wg.Wait()
	if status.Code(greedyErr) != codes.ResourceExhausted {
		t.Fatalf("greedy agent signed %d batches of %d, then %v; want ResourceExhausted", signed, api.MaxSignBatch, greedyErr)
	}
	if msg := status.Convert(greedyErr).Message(); !strings.Contains(msg, "spiffe://dc1.strait/strait/agent/greedy is over its share") || !strings.Contains(msg, "sign_rate_per_caller") {
		t.Fatalf("message %q", msg)
	}
	if signed != 1 {
		t.Fatalf("greedy agent signed %d full batches before the refusal, want 1 (the burst)", signed)
	}
	t.Logf("refused: %s", status.Convert(greedyErr).Message())
}

// TestSigningRequestsInFlightPerCaller: with no per-caller rate set, an
// agent firing many full batches at once has at most two in progress (the
// rest are refused, saying why), so another agent's renewal queues behind
// at most two of its signatures; an agent sending its batches one after
// another is never refused, however many it sends.
func TestSigningRequestsInFlightPerCaller(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "dc1"})
	ctx := controlplanetest.Ctx(t)
	greedy, calm, full, csr := signingAgents(t, c)

	const burst = 12
	errs := make(chan error, burst)
	for range burst {
		go func() {
			_, err := greedy.Identity.SignX509SVIDs(ctx, full)
			errs <- err
		}()
	}
	if _, err := calm.Identity.RenewAgent(ctx, &apipb.RenewAgentRequest{Csr: csr}); err != nil {
		t.Fatalf("the other agent's renewal: %v", err)
	}
	var ok, refused int
	for range burst {
		err := <-errs
		switch {
		case err == nil:
			ok++
		case status.Code(err) == codes.ResourceExhausted && strings.Contains(status.Convert(err).Message(), "already has 2 signing requests in progress"):
			refused++
		default:
			t.Fatalf("greedy batch: %v", err)
		}
	}
	if ok == 0 || refused < burst-2*ok || refused == 0 {
		t.Fatalf("%d concurrent batches: %d signed, %d refused; want at most two in progress at once", burst, ok, refused)
	}
	// One after another, batches are never refused.
	for i := range 3 {
		if _, err := greedy.Identity.SignX509SVIDs(ctx, full); err != nil {
			t.Fatalf("sequential batch %d: %v", i, err)
		}
	}
}

// fakePeerSite makes a peering "evil" on c for a trust domain whose CA the
// test holds (no site runs behind it), and returns a client that calls c
// as one of evil's servers.
func fakePeerSite(t *testing.T, c *controlplanetest.Cluster) *apiclient.Client {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("evil.strait")
	root, err := ca.Generate(td, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := spiffebundle.FromX509Authorities(td, []*x509.Certificate{root.Certificate()}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	peering := &statepb.ForeignBundle{TrustDomain: td.Name(), Bundle: doc, PeerName: "evil"}
	if _, _, err := c.Nodes[0].Server.Apply(controlplanetest.Ctx(t), &statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: peering}}); err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	leaf, err := root.SignX509SVID(spiffeid.RequireFromPath(td, "/strait/server/s1"), key.Public(), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return clientAs(t, c, []*x509.Certificate{leaf}, key)
}

// TestReplicateStreamsPerPeerCapped: a peer opening more replication
// streams than peer_max_streams has the extra ones refused, counted, and
// can open one again once one of its streams ends.
func TestReplicateStreamsPerPeerCapped(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "dc1", Tweak: func(cfg *controlplane.Config) {
		cfg.Registerer, cfg.Gatherer = reg, reg
	}})
	peer := fakePeerSite(t, c)
	ctx := controlplanetest.Ctx(t)
	open := func() (apipb.Federation_ReplicateClient, context.CancelFunc, error) {
		sctx, cancel := context.WithCancel(ctx)
		st, err := peer.Federation.Replicate(sctx)
		if err == nil {
			err = st.Send(&apipb.ReplicateRequest{Msg: &apipb.ReplicateRequest_Hello{Hello: &apipb.ReplicationHello{Site: "evil"}}})
		}
		if errors.Is(err, io.EOF) {
			// The server ended the stream before the hello went out
			// (a refusal): its status comes with Recv.
			err = nil
		}
		if err == nil {
			var ev *apipb.ReplicationEvent
			if ev, err = st.Recv(); err == nil && !ev.Resync {
				t.Fatalf("first event %v is not a resync", ev)
			}
		}
		return st, cancel, err
	}
	var cancels []context.CancelFunc
	for i := range controlplane.DefaultPeerMaxStreams {
		_, cancel, err := open()
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		cancels = append(cancels, cancel)
	}
	_, cancel, err := open()
	cancel()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "peer_max_streams") {
		t.Fatalf("stream beyond the cap: %v, want ResourceExhausted naming peer_max_streams", err)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "strait_federation_export_streams_refused_total")); got != 1 {
		t.Fatalf("refused streams counted %v, want 1", got)
	}
	// Once a stream ends, its slot is free again.
	cancels[0]()
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		_, cancel, err := open()
		cancels = append(cancels, cancel)
		return err
	})
	for _, c := range cancels {
		c()
	}
}

// mustCounter returns the single series of a counter family in reg.
func mustCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: name}, func() float64 { return mf.Metric[0].GetCounter().GetValue() })
		}
	}
	t.Fatalf("no single series of %s", name)
	return nil
}

// TestImportQuotaBetweenSites: a real peer exporting more services than
// this site's quota has the change that would exceed it refused: the
// imports stay as they were, and `federation show` says why.
func TestImportQuotaBetweenSites(t *testing.T) {
	w := wan.New(time.Millisecond)
	t.Cleanup(func() { w.Close() })
	a := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "site-a", BundleEndpoint: true, Tweak: func(c *controlplane.Config) {
		c.PeerDialer = w.Dial
		c.PeerHeartbeat, c.PeerStaleAfter = testPeerHeartbeat, testStaleAfter
		c.PeerMaxServices = 3
	}})
	b := wanSite(t, "site-b", 1, w)
	federate(t, a, b, "site-b")
	ctx := controlplanetest.Ctx(t)
	export := func(svc string) {
		registerAt(t, b.Client(0), "shop", svc, svc+"-1", "10.1.0.1", apipb.Health_HEALTH_PASSING)
		if _, err := b.Client(0).Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: "shop", Service: svc, To: []string{"site-a"}}}); err != nil {
			t.Fatal(err)
		}
	}
	export("s1")
	export("s2")
	waitImported(t, a, "site-b", "shop", "s2", []string{"s2-1"})
	export("s3")
	export("s4")
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		im := peerStatus(t, a.Client(0), "site-b").Imports
		if !strings.Contains(im.LastError, "over the quota of 3 (peer_max_services)") {
			return fmt.Errorf("last error %q", im.LastError)
		}
		if im.Services > 3 {
			return fmt.Errorf("%d services imported over a quota of 3", im.Services)
		}
		return nil
	})
	waitImported(t, a, "site-b", "shop", "s1", []string{"s1-1"})
	waitImported(t, a, "site-b", "shop", "s4", nil)
}
