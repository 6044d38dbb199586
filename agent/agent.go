// Package agent is `strait agent`: it runs on a workload host, joins its
// site with an agent token, holds its own SVID
// spiffe://<td>/strait/agent/<node>, and serves the SPIFFE Workload API
// (package workloadapi) to local processes, issuing each the SVIDs of the
// workload entries registered to this agent whose selectors it matches.
//
// SVID keys are made here and never leave the host; servers sign CSRs.
// SVIDs (workloads' and the agent's own) are renewed at half their
// lifetime; the clock that decides when is injectable.
//
// Goroutines, under one errgroup in Run: the watch loop (the server's
// stream of this agent's entries and the site bundle, reconnecting with
// backoff), the mint loop (signs what is missing or past half-life), the
// renew loop (the agent's own SVID) and the Workload API server. State is
// guarded by mu; changed is closed and replaced on every change.
package agent

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/bundleendpoint"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/enroll"
	"github.com/straitmesh/strait/trust/mtls"
	"github.com/straitmesh/strait/trust/svidfile"
	"github.com/straitmesh/strait/trust/workloadapi"
)

// Config configures an Agent.
type Config struct {
	// Node is this agent's name, a DNS label. Required.
	Node string
	// Servers are addresses of the site's servers. Required.
	Servers []string
	// JoinToken is an agent token (`strait token create --kind agent`),
	// needed on the first start only.
	JoinToken string
	// DataDir keeps the agent's identity. Required.
	DataDir string
	// SocketPath is the Workload API socket. Required.
	SocketPath string
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Now decides when SVIDs are due for renewal; time.Now when nil.
	Now func() time.Time
	// CheckInterval is how often SVID ages are checked; 1s when zero.
	CheckInterval time.Duration
	// MetricsAddr serves Prometheus /metrics; disabled when empty.
	MetricsAddr string
	// Registerer receives metrics; a private registry when nil.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; the private registry when nil.
	Gatherer prometheus.Gatherer
}

// Agent is a running agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	wl      *workloadapi.Server
	metrics *metrics

	// Set by Run before its goroutines start.
	td     spiffeid.TrustDomain
	ident  *mtls.Identity
	client *apiclient.Client

	revocation enroll.RevocationWatch
	revokeOnce sync.Once // see revoked

	mu      sync.Mutex
	synced  bool // the first update from the servers arrived
	entries []*apipb.WorkloadEntry
	bundle  *x509bundle.Bundle
	active  *x509.Certificate // the root that signs now
	jwtAuth *jwtbundle.Bundle
	fed     []*spiffebundle.Bundle // other trust domains' bundles
	svids   map[string]*svid       // by entry ID
	jwts    map[jwtKey]*jwtSVID    // by entry ID and audience
	changed chan struct{}
	kick    chan struct{}
}

type svid struct {
	id    spiffeid.ID
	key   crypto.Signer
	chain []*x509.Certificate
}

// New validates cfg and binds the Workload API socket.
func New(cfg Config) (*Agent, error) {
	if err := meshname.ValidLabel(cfg.Node); err != nil {
		return nil, fmt.Errorf("node_name: %w", err)
	}
	if len(cfg.Servers) == 0 || cfg.DataDir == "" || cfg.SocketPath == "" {
		return nil, errors.New("agent: servers, data_dir and socket_path are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = time.Second
	}
	if cfg.Registerer == nil {
		reg := prometheus.NewRegistry()
		cfg.Registerer, cfg.Gatherer = reg, reg
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer, _ = cfg.Registerer.(prometheus.Gatherer)
	}
	a := &Agent{
		cfg:     cfg,
		log:     cfg.Logger.With("agent", cfg.Node),
		svids:   make(map[string]*svid),
		jwts:    make(map[jwtKey]*jwtSVID),
		changed: make(chan struct{}),
		kick:    make(chan struct{}, 1),
	}
	a.metrics = newMetrics(a, cfg.Registerer)
	wl, err := workloadapi.New(workloadapi.Config{SocketPath: cfg.SocketPath, Source: a, Logger: a.log, Registerer: cfg.Registerer})
	if err != nil {
		return nil, err
	}
	a.wl = wl
	return a, nil
}

// Run joins (first start) or loads the agent's identity and serves until
// ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.loadOrJoin(ctx); err != nil {
		a.wl.Close()
		return err
	}
	cl, err := apiclient.Dial(apiclient.Config{Addrs: a.cfg.Servers, CA: a.ident.Bundle().X509Authorities(), Identity: a.ident})
	if err != nil {
		a.wl.Close()
		return err
	}
	defer cl.Close()
	a.client = cl
	a.log.Info("agent started", "trust_domain", a.td.Name(), "socket", a.cfg.SocketPath)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.watchLoop(gctx) })
	g.Go(func() error { return a.mintLoop(gctx) })
	g.Go(func() error { return a.renewLoop(gctx) })
	g.Go(func() error { return a.wl.Run(gctx) })
	if a.cfg.MetricsAddr != "" {
		g.Go(func() error { return a.serveMetrics(gctx) })
	}
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// agentInfoFile, in the data dir, names the agent and its trust domain.
const agentInfoFile = "agent.json"

func (a *Agent) tlsDir() string { return filepath.Join(a.cfg.DataDir, "tls") }

func (a *Agent) loadOrJoin(ctx context.Context) error {
	id, ident, joined, err := enroll.LoadOrEnroll(ctx, enroll.Node{Kind: "agent", Dir: a.cfg.DataDir, InfoFile: agentInfoFile,
		NameKey: "node", Name: a.cfg.Node, Servers: a.cfg.Servers, Token: a.cfg.JoinToken, Now: a.cfg.Now, Logger: a.log,
		Join: func(ctx context.Context, conn *grpc.ClientConn, csr []byte) (*enroll.Response, error) {
			r, err := apipb.NewIdentityClient(conn).AgentJoin(ctx, &apipb.AgentJoinRequest{Node: a.cfg.Node, Csr: csr})
			if err != nil {
				return nil, err
			}
			return &enroll.Response{TrustDomain: r.TrustDomain, SVID: r.Svid, Bundle: r.Bundle}, nil
		}})
	if err != nil {
		return err
	}
	if joined {
		a.log.Info("agent joined site", "trust_domain", id.TrustDomain.Name(), "via", id.Via)
	}
	a.td, a.ident = id.TrustDomain, ident
	return nil
}

// revoked ends the agent once the servers said it was revoked (and kept
// saying so: see enroll.RevocationWatch): retrying cannot help. Its
// identity is set aside, so that a restart with a new token joins again.
func (a *Agent) revoked(err error) error {
	a.revokeOnce.Do(func() {
		a.log.Error("this agent was revoked (strait agent revoke); re-join with a new token", "data_dir", a.cfg.DataDir, "err", err)
		if merr := enroll.MarkRevoked(a.cfg.DataDir, agentInfoFile); merr != nil {
			a.log.Warn("revoked identity not set aside; move the data dir away before re-joining", "err", merr)
		}
	})
	return enroll.Revoked("agent", a.cfg.Node)
}

// notify wakes Workload API streams. mu held.
func (a *Agent) notify() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// watchLoop keeps entries and the bundle current from the servers.
func (a *Agent) watchLoop(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		stream, err := a.client.Identity.WatchAgent(ctx, &apipb.WatchAgentRequest{})
		if err == nil {
			for {
				upd, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				a.revocation.Confirmed(nil)
				backoff = 100 * time.Millisecond
				if aerr := a.apply(upd); aerr != nil {
					a.log.Warn("bad update from server", "err", aerr)
				}
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if a.revocation.Confirmed(err) {
			return a.revoked(err)
		}
		a.log.Warn("lost the servers' watch; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
	return nil
}

func (a *Agent) apply(upd *apipb.AgentUpdate) error {
	certs, err := enroll.ParseDERs(upd.Bundle)
	if err != nil {
		return err
	}
	bundle := x509bundle.FromX509Authorities(a.td, certs)
	jwtAuth := jwtbundle.New(a.td)
	for _, k := range upd.JwtAuthorities {
		pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
		if err != nil {
			return fmt.Errorf("jwt authority %s: %w", k.Kid, err)
		}
		if err := jwtAuth.AddJWTAuthority(k.Kid, pub); err != nil {
			return err
		}
	}
	var fed []*spiffebundle.Bundle
	for _, f := range upd.Federated {
		td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
		if err != nil {
			a.log.Warn("ignoring a federated bundle", "trust_domain", f.TrustDomain, "err", err)
			continue
		}
		fb, err := bundleendpoint.Parse(td, f.Bundle)
		if err != nil {
			a.log.Warn("ignoring a federated bundle", "trust_domain", f.TrustDomain, "err", err)
			continue
		}
		fed = append(fed, fb)
	}
	a.ident.SetBundle(bundle)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.synced = true
	a.fed = fed
	a.bundle = bundle
	if active, err := x509.ParseCertificate(upd.ActiveAuthority); err == nil {
		a.active = active
	}
	a.jwtAuth = jwtAuth
	a.entries = upd.Entries
	keep := make(map[string]bool, len(upd.Entries))
	for _, e := range upd.Entries {
		keep[e.Id] = true
	}
	for id := range a.svids {
		if !keep[id] {
			delete(a.svids, id)
		}
	}
	for k := range a.jwts {
		if !keep[k.entry] {
			delete(a.jwts, k)
		}
	}
	a.notify()
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return nil
}

// mintLoop signs SVIDs that are missing or past half-life.
func (a *Agent) mintLoop(ctx context.Context) error {
	t := time.NewTicker(a.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-a.kick:
		}
		if err := a.mint(ctx); err != nil && ctx.Err() == nil {
			if a.revocation.Confirmed(err) {
				return a.revoked(err)
			}
			a.log.Warn("svid signing failed; will retry", "err", err)
		}
	}
}

// signBatch bounds one signing request.
const signBatch = 500

type pending struct {
	entry *apipb.WorkloadEntry
	id    spiffeid.ID
	key   crypto.Signer
}

func (a *Agent) mint(ctx context.Context) error {
	now := a.cfg.Now()
	var todo []pending
	a.mu.Lock()
	for _, e := range a.entries {
		if s, ok := a.svids[e.Id]; ok && !ca.NeedsRenewal(s.chain[0], a.active, now) {
			continue
		}
		id, err := trust.WorkloadID(a.td, e.Namespace, e.Service)
		if err != nil {
			a.mu.Unlock()
			return err
		}
		todo = append(todo, pending{entry: e, id: id})
	}
	a.mu.Unlock()
	for len(todo) > 0 {
		n := min(len(todo), signBatch)
		if err := a.signSome(ctx, todo[:n]); err != nil {
			return err
		}
		todo = todo[n:]
	}
	return nil
}

func (a *Agent) signSome(ctx context.Context, batch []pending) error {
	req := &apipb.SignRequest{}
	for i := range batch {
		key, err := ca.NewKey()
		if err != nil {
			return err
		}
		csr, err := ca.NewCSR(key)
		if err != nil {
			return err
		}
		batch[i].key = key
		req.Items = append(req.Items, &apipb.SignRequest_Item{EntryId: batch[i].entry.Id, Csr: csr})
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := a.client.Identity.SignX509SVIDs(ctx, req)
	if err != nil {
		return err
	}
	a.log.Debug("svids signed", "count", len(batch), "took", time.Since(start))
	if len(resp.Svids) != len(batch) {
		return fmt.Errorf("asked for %d SVIDs, got %d", len(batch), len(resp.Svids))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, sv := range resp.Svids {
		p := batch[i]
		chain, err := enroll.ParseDERs(sv.Chain)
		if err != nil || len(chain) == 0 || sv.EntryId != p.entry.Id {
			return fmt.Errorf("bad SVID for entry %s from server", p.entry.Id)
		}
		if got, err := spiffeIDOf(chain[0]); err != nil || got != p.id {
			return fmt.Errorf("server signed %v for entry %s, want %s", got, p.entry.Id, p.id)
		}
		a.svids[p.entry.Id] = &svid{id: p.id, key: p.key, chain: chain}
	}
	a.metrics.signed.Add(float64(len(batch)))
	a.notify()
	return nil
}

func spiffeIDOf(c *x509.Certificate) (spiffeid.ID, error) {
	if len(c.URIs) != 1 {
		return spiffeid.ID{}, errors.New("not one URI SAN")
	}
	return spiffeid.FromURI(c.URIs[0])
}

// renewLoop keeps the agent's own SVID fresh.
func (a *Agent) renewLoop(ctx context.Context) error {
	t := time.NewTicker(a.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cur := a.ident.SVID()
		a.mu.Lock()
		active := a.active
		a.mu.Unlock()
		if !ca.NeedsRenewal(cur.Certificates[0], active, a.cfg.Now()) {
			continue
		}
		err := a.renew(ctx)
		if a.revocation.Confirmed(err) {
			return a.revoked(err)
		}
		if err != nil && ctx.Err() == nil {
			a.log.Warn("agent svid renewal failed; will retry", "err", err)
		}
	}
}

func (a *Agent) renew(ctx context.Context) error {
	key, err := ca.NewKey()
	if err != nil {
		return err
	}
	csr, err := ca.NewCSR(key)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := a.client.Identity.RenewAgent(ctx, &apipb.RenewAgentRequest{Csr: csr})
	if err != nil {
		return err
	}
	chain, err := enroll.ParseDERs(resp.Svid)
	if err != nil {
		return err
	}
	if err := svidfile.Write(a.tlsDir(), chain, key, a.ident.Bundle().X509Authorities()); err != nil {
		return err
	}
	a.log.Info("agent svid renewed", "expires", chain[0].NotAfter)
	return a.ident.SetSVID(chain, key)
}

var _ workloadapi.Source = (*Agent)(nil)

// Identities implements workloadapi.Source.
func (a *Agent) Identities(c workloadapi.Caller) ([]workloadapi.Identity, bool) {
	sel := c.Selectors()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.synced {
		return nil, true // not known yet: callers wait for the first update
	}
	var out []workloadapi.Identity
	entitled := false
	for _, e := range a.entries {
		if !matches(e, sel) {
			continue
		}
		entitled = true
		if s, ok := a.svids[e.Id]; ok {
			out = append(out, workloadapi.Identity{ID: s.id, Chain: s.chain, Key: s.key})
		}
	}
	return out, entitled
}

func matches(e *apipb.WorkloadEntry, sel map[string]string) bool {
	for _, s := range e.Selectors {
		// A key the caller lacks never matches, not even an empty value.
		if v, ok := sel[s.Key]; s.Type != "unix" || !ok || v != s.Value {
			return false
		}
	}
	return len(e.Selectors) > 0
}

// Bundles implements workloadapi.Source.
func (a *Agent) Bundles() (*x509bundle.Bundle, []*x509bundle.Bundle) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var fed []*x509bundle.Bundle
	for _, b := range a.fed {
		if len(b.X509Authorities()) > 0 {
			fed = append(fed, b.X509Bundle())
		}
	}
	if a.bundle == nil {
		return a.ident.Bundle(), fed
	}
	return a.bundle, fed
}

// Changed implements workloadapi.Source.
func (a *Agent) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

// Status is a snapshot of what the agent holds.
type Status struct {
	// Entries this agent may issue.
	Entries int
	// SVIDs held, one per entry at most.
	SVIDs int
	// Due are SVIDs missing or due for renewal now.
	Due int
}

// Status reports what the agent holds.
func (a *Agent) Status() Status {
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := Status{Entries: len(a.entries), SVIDs: len(a.svids)}
	for _, e := range a.entries {
		if s, ok := a.svids[e.Id]; !ok || ca.NeedsRenewal(s.chain[0], a.active, now) {
			st.Due++
		}
	}
	return st
}
