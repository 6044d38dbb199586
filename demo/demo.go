// Package demo runs federated sites on one machine, in one process: each
// site three servers (durable Raft in a temporary directory), a gateway,
// mesh DNS, and a sample HTTP service exported to the other sites, with
// the intentions that let them call it. It is `strait demo`, and a quick
// way for tests and scenarios to stand up a federation.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/dns"
	"github.com/straitmesh/strait/gateway"
)

// SiteNames are the demo's sites, in order.
var SiteNames = []string{"aws-east", "gcp-west", "azure-north"}

// Namespace of the sample services; each site runs one named after its
// role: the first site's is "web", the second's "api", the third's "ledger".
const Namespace = "shop"

var serviceNames = []string{"web", "api", "ledger"}

// Site is one running demo site.
type Site struct {
	Name, TrustDomain string
	Servers           []string // API addresses
	DNSAddr           string
	MetricsURL        string
	GatewayWAN        string
	GatewayMetricsURL string
	Service           string // the sample service's name
	ServicePort       int
	ManagementToken   string
	CAFile            string
	VIPRange          string
	client            *apiclient.Client
}

// Demo is a running federation.
type Demo struct {
	Sites []*Site
	Dir   string
	stop  context.CancelFunc
	done  chan struct{}
	err   error
}

// Options adjust the demo.
type Options struct {
	Sites  int          // 2 or 3
	Logger *slog.Logger // server and gateway logs; discarded when nil
}

// Start brings the federation up and returns once traffic can flow: every
// site's sample service resolves in every other site and its gateway is
// serving. Stop (or ctx) tears everything down and removes the files.
func Start(ctx context.Context, opts Options) (*Demo, error) {
	if opts.Sites < 2 || opts.Sites > len(SiteNames) {
		return nil, fmt.Errorf("demo: %d sites; 2 or 3 are possible", opts.Sites)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dir, err := os.MkdirTemp("", "strait-demo-")
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d := &Demo{Dir: dir, stop: cancel, done: make(chan struct{})}
	g, gctx := errgroup.WithContext(rctx)
	ok := false
	defer func() {
		if !ok {
			cancel()
			g.Wait()
			os.RemoveAll(dir)
		}
	}()
	for i := range opts.Sites {
		s, err := startSite(gctx, g, dir, i, log)
		if err != nil {
			return nil, fmt.Errorf("site %s: %w", SiteNames[i], err)
		}
		d.Sites = append(d.Sites, s)
	}
	// Every pair federates: the earlier site invites, the later joins.
	for i, a := range d.Sites {
		for _, b := range d.Sites[i+1:] {
			if err := federate(ctx, a, b); err != nil {
				return nil, fmt.Errorf("federate %s and %s: %w", a.Name, b.Name, err)
			}
		}
	}
	for _, s := range d.Sites {
		if err := s.publish(ctx); err != nil {
			return nil, fmt.Errorf("site %s: %w", s.Name, err)
		}
	}
	if err := d.waitReady(ctx); err != nil {
		return nil, err
	}
	go func() { d.err = g.Wait(); close(d.done) }()
	ok = true
	return d, nil
}

// Stop tears the federation down and removes its files.
func (d *Demo) Stop() error {
	d.stop()
	<-d.done
	for _, s := range d.Sites {
		s.client.Close()
	}
	os.RemoveAll(d.Dir)
	if errors.Is(d.err, context.Canceled) {
		return nil
	}
	return d.err
}

// Done is closed when the demo ends: stopped, or a component failed (Stop
// then returns its error).
func (d *Demo) Done() <-chan struct{} { return d.done }

func listen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

func startSite(ctx context.Context, g *errgroup.Group, dir string, i int, log *slog.Logger) (*Site, error) {
	name := SiteNames[i]
	s := &Site{Name: name, TrustDomain: name + ".strait", Service: serviceNames[i], VIPRange: fmt.Sprintf("127.%d.0.0/16", 240+i)}
	tokens := make(chan string, 1)
	var joinToken string
	for n := range 3 {
		node := fmt.Sprintf("%s-s%d", name, n)
		ln, err := listen()
		if err != nil {
			return nil, err
		}
		bl, err := listen()
		if err != nil {
			return nil, err
		}
		cfg := controlplane.Config{
			Site: name, NodeID: node, DataDir: filepath.Join(dir, node), Listener: ln, BundleListener: bl,
			VirtualIPCIDR: s.VIPRange, Logger: log.With("server", node), Registerer: prometheus.NewRegistry(),
			PeerHeartbeat: time.Second, PeerStaleAfter: 10 * time.Second,
		}
		if n == 0 {
			pc, dl, err := dns.Listen("127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			cfg.DNSPacketConn, cfg.DNSListener = pc, dl
			s.DNSAddr = pc.LocalAddr().String()
			ml, err := listen()
			if err != nil {
				return nil, err
			}
			cfg.MetricsAddr = ml.Addr().String()
			ml.Close()
			s.MetricsURL = "http://" + cfg.MetricsAddr + "/metrics"
			cfg.Bootstrap = true
			cfg.OnBootstrap = func(tok string) { tokens <- tok }
			reg := prometheus.NewRegistry()
			cfg.Registerer, cfg.Gatherer = reg, reg
		} else {
			cfg.Join, cfg.JoinToken = s.Servers[:1], joinToken
		}
		srv, err := controlplane.New(cfg)
		if err != nil {
			return nil, err
		}
		g.Go(func() error { return srv.Run(ctx) })
		s.Servers = append(s.Servers, srv.Addr())
		if n == 0 {
			select {
			case s.ManagementToken = <-tokens:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(30 * time.Second):
				return nil, errors.New("the first server did not bootstrap within 30s")
			}
			s.CAFile = controlplane.CAFile(cfg.DataDir)
			cl, err := apiclient.Dial(apiclient.Config{Addr: s.Servers[0], Token: s.ManagementToken, CAFile: s.CAFile})
			if err != nil {
				return nil, err
			}
			s.client = cl
		}
		if n < 2 {
			// A token for the next server.
			tok, err := s.client.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_SERVER})
			if err != nil {
				return nil, err
			}
			joinToken = tok.Secret
		}
	}
	if err := waitVoters(ctx, s.client, 3); err != nil {
		return nil, err
	}
	// The gateway.
	tok, err := s.client.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_GATEWAY, MaxUses: 1})
	if err != nil {
		return nil, err
	}
	wl, err := listen()
	if err != nil {
		return nil, err
	}
	ml, err := listen()
	if err != nil {
		return nil, err
	}
	gmetrics := ml.Addr().String()
	ml.Close()
	gw, err := gateway.New(gateway.Config{Name: name + "-gw", Servers: s.Servers, DataDir: filepath.Join(dir, name+"-gw"), JoinToken: tok.Secret,
		WANListener: wl, MetricsAddr: gmetrics, Logger: log.With("gateway", name+"-gw"), HeartbeatInterval: time.Second})
	if err != nil {
		return nil, err
	}
	g.Go(func() error { return gw.Run(ctx) })
	s.GatewayWAN, s.GatewayMetricsURL = wl.Addr().String(), "http://"+gmetrics+"/metrics"
	select {
	case <-gw.Ready():
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(30 * time.Second):
		return nil, errors.New("the gateway did not start within 30s")
	}
	// The sample service: an HTTP server saying where it runs.
	hl, err := listen()
	if err != nil {
		return nil, err
	}
	s.ServicePort = hl.Addr().(*net.TCPAddr).Port
	hs := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s.%s in site %s (you came from %s)\n", s.Service, Namespace, name, r.RemoteAddr)
	})}
	g.Go(func() error {
		go func() { <-ctx.Done(); hs.Close() }()
		if err := hs.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	_, err = s.client.Catalog.Register(ctx, &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: Namespace, Name: s.Service, Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
		Instance: &apipb.Instance{Id: s.Service + "-1", Address: "127.0.0.1", Ports: map[string]uint32{"http": uint32(s.ServicePort)}},
	})
	return s, err
}

func waitVoters(ctx context.Context, cl *apiclient.Client, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		peers, err := cl.Operator.ListPeers(ctx, &apipb.ListPeersRequest{})
		if err == nil {
			voters := 0
			for _, p := range peers.Peers {
				if p.Voter {
					voters++
				}
			}
			if voters == n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d voters not reached within 60s (%v)", n, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func federate(ctx context.Context, a, b *Site) error {
	inv, err := a.client.Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{})
	if err != nil {
		return err
	}
	_, err = b.client.Federation.Join(ctx, &apipb.JoinFederationRequest{Token: inv.Token})
	return err
}

// publish exports the site's sample service to every peer and allows every
// peer to call it.
func (s *Site) publish(ctx context.Context) error {
	if _, err := s.client.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: Namespace, Service: s.Service, To: []string{"*"}}}); err != nil {
		return err
	}
	peers, err := s.client.Federation.List(ctx, &apipb.ListPeersFedRequest{})
	if err != nil {
		return err
	}
	for _, p := range peers.Peers {
		_, err := s.client.Intentions.Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{
			Source: p.Name, Destination: Namespace + "/" + s.Service, Action: apipb.IntentionAction_INTENTION_ACTION_ALLOW,
			Description: "demo: " + p.Name + " may call " + s.Service}})
		if err != nil {
			return err
		}
	}
	return nil
}

// VirtualIP returns the virtual IP site `in` gave the sample service of
// site `of`.
func (d *Demo) VirtualIP(ctx context.Context, in, of *Site) (string, error) {
	r, err := in.client.Catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: Namespace, Name: of.Service, Peer: of.Name})
	if err != nil {
		return "", err
	}
	if r.Service.VirtualIp == "" {
		return "", errors.New("no virtual IP yet")
	}
	return r.Service.VirtualIp, nil
}

// waitReady waits until each site can call every other site's service
// through the gateways.
func (d *Demo) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(90 * time.Second)
	hc := &http.Client{Timeout: 2 * time.Second}
	for _, in := range d.Sites {
		for _, of := range d.Sites {
			if in == of {
				continue
			}
			for {
				err := func() error {
					vip, err := d.VirtualIP(ctx, in, of)
					if err != nil {
						return err
					}
					resp, err := hc.Get("http://" + net.JoinHostPort(vip, strconv.Itoa(of.ServicePort)) + "/")
					if err != nil {
						return err
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						return fmt.Errorf("status %s", resp.Status)
					}
					return nil
				}()
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("%s cannot reach %s's %s through the gateways: %w", in.Name, of.Name, of.Service, err)
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
	}
	return nil
}
