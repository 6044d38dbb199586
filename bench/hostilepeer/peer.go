package hostilepeer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/federation/token"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/mtls"
)

// svidTTL is the life of the fake peer's SVIDs: longer than any test.
const svidTTL = 24 * time.Hour

// Peer is a fake federated site: its own CA and trust domain, a server
// SVID and a gateway SVID of it.
type Peer struct {
	// Site is the fake site's name; its trust domain is <Site>.strait.
	Site string
	TD   spiffeid.TrustDomain
	CA   *ca.CA
	// Server and Gateway are TLS certificates with the SVIDs
	// spiffe://<td>/strait/server/<site> and spiffe://<td>/strait/gateway/<site>.
	Server, Gateway tls.Certificate

	mu sync.Mutex
	// victim is what the last invite said of the real site.
	victimTD     spiffeid.TrustDomain
	victimBundle *x509bundle.Bundle
	closers      []func()
}

// New makes a fake site named site: a new CA for trust domain
// <site>.strait and the SVIDs it needs.
func New(site string) (*Peer, error) {
	if err := meshname.ValidLabel(site); err != nil {
		return nil, fmt.Errorf("new fake peer: site: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(site + ".strait")
	if err != nil {
		return nil, fmt.Errorf("new fake peer: %w", err)
	}
	now := time.Now()
	root, err := ca.Generate(td, now.Add(-time.Minute), 48*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("new fake peer: %w", err)
	}
	p := &Peer{Site: site, TD: td, CA: root}
	sid, err := trust.ServerID(td, site)
	if err != nil {
		return nil, err
	}
	if p.Server, err = p.svid(sid); err != nil {
		return nil, err
	}
	gid, err := trust.GatewayID(td, site)
	if err != nil {
		return nil, err
	}
	if p.Gateway, err = p.svid(gid); err != nil {
		return nil, err
	}
	return p, nil
}

// svid issues a certificate for id from the fake CA.
func (p *Peer) svid(id spiffeid.ID) (tls.Certificate, error) {
	key, err := ca.NewKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := p.CA.SignX509SVID(id, key.Public(), time.Now().Add(-time.Minute), svidTTL)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sign %s: %w", id, err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, nil
}

// BundleDoc is the fake site's SPIFFE bundle document.
func (p *Peer) BundleDoc() ([]byte, error) {
	b := spiffebundle.FromX509Authorities(p.TD, []*x509.Certificate{p.CA.Certificate()})
	b.SetSequenceNumber(1)
	return b.Marshal()
}

// Close stops everything the peer started (servers, tunnels).
func (p *Peer) Close() {
	p.mu.Lock()
	closers := p.closers
	p.closers = nil
	p.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
}

func (p *Peer) onClose(f func()) {
	p.mu.Lock()
	p.closers = append(p.closers, f)
	p.mu.Unlock()
}

// AcceptRequest is what the fake peer tells the real site when it redeems
// an invite. Zero fields take working defaults; set them to anything to
// probe the Accept handler's validation.
type AcceptRequest struct {
	// Name is the peer name asked for (AcceptRequest.requested_name);
	// the invite's when empty.
	Name string
	// Addresses are where the real site's leader will call the fake
	// peer's servers (Serve's address). Required.
	Addresses []string
	// Gateways are the fake peer's gateway addresses.
	Gateways []string
	// BundleEndpointURL; a placeholder https URL when empty (nobody
	// serves it: the real site gets the bundle from the invite and from
	// replication).
	BundleEndpointURL string
}

// Accept redeems a real site's federation invite by calling its
// Federation.Accept directly, as a joining server would: the real site
// then lists this fake site as a peer and its leader starts replicating
// from req.Addresses. It returns the name the real site gave the peer.
func (p *Peer) Accept(ctx context.Context, invite string, req AcceptRequest) (string, error) {
	inv, siteBundle, err := token.Decode(invite, time.Now())
	if err != nil {
		return "", fmt.Errorf("accept: decode invite: %w", err)
	}
	p.mu.Lock()
	p.victimTD, p.victimBundle = siteBundle.TrustDomain(), siteBundle.X509Bundle()
	p.mu.Unlock()
	doc, err := p.BundleDoc()
	if err != nil {
		return "", err
	}
	ar := &apipb.AcceptRequest{Site: p.Site, TrustDomain: p.TD.Name(), Bundle: doc,
		BundleEndpointUrl: req.BundleEndpointURL, Addresses: req.Addresses, RequestedName: req.Name, Gateways: req.Gateways}
	if ar.BundleEndpointUrl == "" {
		ar.BundleEndpointUrl = "https://" + p.Site + ".invalid/bundle"
	}
	if ar.RequestedName == "" {
		ar.RequestedName = inv.Peer
	}
	// No client certificate: the invite's secret authenticates the call.
	ident := mtls.NewIdentity(siteBundle.X509Bundle(), time.Now)
	siteTD := siteBundle.TrustDomain()
	authorize := func(id spiffeid.ID) error {
		if !trust.IsServer(id, siteTD) {
			return fmt.Errorf("%s is not a server of %s", id, siteTD)
		}
		return nil
	}
	type target struct{ addr, sni string }
	var targets []target
	for _, a := range inv.Gateways {
		targets = append(targets, target{a, meshname.ServersSNI(siteTD.Name())})
	}
	for _, a := range inv.Addresses {
		targets = append(targets, target{a, ""})
	}
	var errs []error
	for _, t := range targets {
		cfg := mtls.ClientConfig(ident, authorize, "h2")
		cfg.ServerName = t.sni
		conn, err := grpc.NewClient(t.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		cctx = metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer "+inv.Secret)
		resp, err := apipb.NewFederationClient(conn).Accept(cctx, ar)
		cancel()
		conn.Close()
		if err == nil {
			return resp.Name, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", t.addr, err))
	}
	if len(errs) == 0 {
		return "", errors.New("accept: the invite names no address")
	}
	return "", fmt.Errorf("accept: %w", errors.Join(errs...))
}

// Script feeds one Replicate stream: it sends what it likes with send,
// and returns when done (the stream then stays open, silent, until the
// real site or ctx ends it) or when send fails.
type Script func(ctx context.Context, send func(*apipb.ReplicationEvent) error) error

// Server is the fake peer's server: it answers the real site's
// Replicate calls with a Script.
type Server struct {
	// Addr is where it listens.
	Addr string
	mu   sync.Mutex
	// streams counts Replicate calls served; acks is the last version the
	// real site acknowledged.
	streams int
	acked   uint64
}

// Streams is how many Replicate calls the server has served.
func (s *Server) Streams() int { s.mu.Lock(); defer s.mu.Unlock(); return s.streams }

// Acked is the highest version the real site acknowledged.
func (s *Server) Acked() uint64 { s.mu.Lock(); defer s.mu.Unlock(); return s.acked }

type replicateServer struct {
	apipb.UnimplementedFederationServer
	s      *Server
	script Script
}

func (r replicateServer) Replicate(stream apipb.Federation_ReplicateServer) error {
	ctx := stream.Context()
	r.s.mu.Lock()
	r.s.streams++
	r.s.mu.Unlock()
	go func() { // read the hello and the acknowledgements
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			if a := m.GetAck(); a != nil {
				r.s.mu.Lock()
				r.s.acked = max(r.s.acked, a.Version)
				r.s.mu.Unlock()
			}
		}
	}()
	var mu sync.Mutex // grpc streams allow one sender at a time
	send := func(ev *apipb.ReplicationEvent) error {
		mu.Lock()
		defer mu.Unlock()
		return stream.Send(ev)
	}
	if err := r.script(ctx, send); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// Unpeer accepts the real site's notice that it removed the peering.
func (replicateServer) Unpeer(context.Context, *apipb.UnpeerRequest) (*apipb.UnpeerResponse, error) {
	return &apipb.UnpeerResponse{}, nil
}

// Serve starts the fake peer's server on addr (host:port; port 0 picks
// one), answering every Replicate call with script. It stops with Close
// or when ctx ends.
func (p *Peer) Serve(ctx context.Context, addr string, script Script) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fake peer server: %w", err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2"},
		Certificates: []tls.Certificate{p.Server},
		// The real site's leader presents its server SVID; the fake
		// peer takes anyone.
		ClientAuth: tls.RequestClientCert,
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	s := &Server{Addr: ln.Addr().String()}
	apipb.RegisterFederationServer(gs, replicateServer{s: s, script: script})
	go gs.Serve(ln)
	stop := context.AfterFunc(ctx, gs.Stop)
	p.onClose(func() { stop(); gs.Stop() })
	return s, nil
}
