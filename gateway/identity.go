package gateway

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/enroll"
	"github.com/straitmesh/strait/trust/svidfile"
)

// The gateway's identity: joined once with a gateway token (its key never
// leaves the host; the servers sign a CSR), kept in <data_dir>/tls, and
// renewed with the SVID itself at half-life.

func (g *Gateway) tlsDir() string { return filepath.Join(g.cfg.DataDir, "tls") }

// gatewayInfoFile, in the data dir, names the gateway and its trust domain.
const gatewayInfoFile = "gateway.json"

func (g *Gateway) loadOrJoin(ctx context.Context) error {
	id, ident, joined, err := enroll.LoadOrEnroll(ctx, enroll.Node{Kind: "gateway", Dir: g.cfg.DataDir, InfoFile: gatewayInfoFile,
		NameKey: "name", Name: g.cfg.Name, Servers: g.cfg.Servers, Token: g.cfg.JoinToken, Now: g.cfg.Now, Logger: g.log,
		Join: func(ctx context.Context, conn *grpc.ClientConn, csr []byte) (*enroll.Response, error) {
			r, err := apipb.NewGatewayClient(conn).Join(ctx, &apipb.GatewayJoinRequest{Name: g.cfg.Name, Csr: csr})
			if err != nil {
				return nil, err
			}
			return &enroll.Response{TrustDomain: r.TrustDomain, SVID: r.Svid, Bundle: r.Bundle}, nil
		}})
	if err != nil {
		return err
	}
	if joined {
		g.log.Info("gateway joined site", "trust_domain", id.TrustDomain.Name(), "via", id.Via)
	}
	g.td, g.ident = id.TrustDomain, ident
	if leaf := ident.SVID().Certificates[0]; !g.cfg.Now().Before(leaf.NotAfter) {
		// It cannot renew with it: the servers refuse an expired SVID.
		return fmt.Errorf("this gateway's SVID expired at %s (gateway SVIDs last %s and renew at half-life; the gateway was stopped for longer): "+
			"run `strait gateway revoke %s` on the site, remove %s and %s, and start it again with a new --join-token",
			leaf.NotAfter.UTC().Format(time.RFC3339), leaf.NotAfter.Sub(leaf.NotBefore).Round(time.Minute), g.cfg.Name,
			g.tlsDir(), filepath.Join(g.cfg.DataDir, "gateway.json"))
	}
	return nil
}

// revoked ends the gateway once the servers said it was revoked (and kept
// saying so: see enroll.RevocationWatch): retrying cannot help. Its
// identity is set aside, so that a restart with a new token joins again.
func (g *Gateway) revoked(err error) error {
	g.revokeOnce.Do(func() {
		g.log.Error("this gateway was revoked (strait gateway revoke); re-join with a new token", "data_dir", g.cfg.DataDir, "err", err)
		if merr := enroll.MarkRevoked(g.cfg.DataDir, gatewayInfoFile); merr != nil {
			g.log.Warn("revoked identity not set aside; move the data dir away before re-joining", "err", merr)
		}
	})
	return enroll.Revoked("gateway", g.cfg.Name)
}

// renewLoop renews the SVID at half-life, and picks up the site's current
// CA certificates (a CA rotation) with each renewal. It checks at once
// when it starts (a gateway restarted past its SVID's half-life renews
// now, not a RenewCheck later), then every RenewCheck.
func (g *Gateway) renewLoop(ctx context.Context) error {
	t := time.NewTicker(g.cfg.RenewCheck)
	defer t.Stop()
	for {
		if g.renewDue() {
			err := g.renew(ctx)
			if g.revocation.Confirmed(err) {
				return g.revoked(err)
			}
			if err != nil && ctx.Err() == nil {
				g.log.Warn("gateway svid renewal failed; will retry", "err", err, "retry_in", g.cfg.RenewCheck,
					"expires", g.ident.SVID().Certificates[0].NotAfter)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// renewDue reports whether the SVID should be renewed (ca.NeedsRenewal):
// past half its life, or not issued by the site's active root. The site
// lists its active root first in the bundle it sends (on join, renewal
// and over xDS); a root prepared in a CA rotation follows it, and does
// not make the gateway renew until it is activated.
func (g *Gateway) renewDue() bool {
	var active *x509.Certificate
	if roots := g.ident.Bundle().X509Authorities(); len(roots) > 0 {
		active = roots[0]
	}
	return ca.NeedsRenewal(g.ident.SVID().Certificates[0], active, g.cfg.Now())
}

func (g *Gateway) renew(ctx context.Context) error {
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
	resp, err := g.client.Gateway.Renew(ctx, &apipb.RenewGatewayRequest{Csr: csr})
	if err != nil {
		return err
	}
	chain, err := enroll.ParseDERs(resp.Svid)
	if err != nil {
		return err
	}
	bundle, err := enroll.ParseDERs(resp.Bundle)
	if err != nil {
		return err
	}
	if err := svidfile.Write(g.tlsDir(), chain, key, bundle); err != nil {
		return err
	}
	g.ident.SetBundle(x509bundle.FromX509Authorities(g.td, bundle))
	g.log.Info("gateway svid renewed", "expires", chain[0].NotAfter)
	return g.ident.SetSVID(chain, key)
}

// heartbeatLoop keeps the gateway in the catalog (strait/gateway), which
// is how peers learn where to send traffic. It stops when draining, so
// peers stop choosing this gateway.
func (g *Gateway) heartbeatLoop(ctx context.Context) error {
	t := time.NewTicker(g.cfg.HeartbeatInterval)
	defer t.Stop()
	warned := false
	for {
		if !g.draining.Load() {
			hctx, cancel := context.WithTimeout(ctx, g.cfg.HeartbeatInterval)
			peers, up := g.tunnelReport()
			_, err := g.client.Gateway.Heartbeat(hctx, &apipb.GatewayHeartbeatRequest{WanAddress: g.cfg.AdvertiseWAN, PeerGateways: peers, PeerGatewaysUp: up})
			cancel()
			result := "ok"
			if err != nil {
				result = "error"
			}
			g.m.heartbeats.WithLabelValues(result).Inc()
			if g.revocation.Confirmed(err) {
				return g.revoked(err)
			}
			switch {
			case err != nil && ctx.Err() == nil && !warned:
				g.log.Warn("gateway heartbeat failed; will retry", "err", err)
				warned = true
			case err == nil:
				warned = false
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
