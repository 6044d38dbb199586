package api

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
)

// Site status verdicts.
const (
	VerdictHealthy   = "healthy"
	VerdictDegraded  = "degraded"
	VerdictUnhealthy = "unhealthy"
)

// siteStatusPeersTimeout bounds asking the leader for the peers' runtime
// state; past it, this server's replica answers.
const siteStatusPeersTimeout = 3 * time.Second

// caExpiryWarning is how close to its expiry the active CA root makes the
// site degraded.
const caExpiryWarning = 30 * 24 * time.Hour

// ServerStatus is Status for another server of the site: SiteStatus on
// that server probes this one with it.
func (s clusterService) ServerStatus(ctx context.Context, req *apipb.StatusRequest) (*apipb.StatusResponse, error) {
	return s.node.Status(), nil
}

// SiteStatus is answered by this server, whether or not it leads, so that
// it works when the site has no leader: it probes every server, asks the
// leader (when there is one) for the peers' streams, lists the gateways
// and the CA, and judges the whole.
func (s operatorService) SiteStatus(ctx context.Context, req *apipb.SiteStatusRequest) (*apipb.SiteStatusResponse, error) {
	release, err := s.diag.acquire(ctx, "SiteStatus")
	if err != nil {
		return nil, err
	}
	defer release()
	own := s.node.Status()
	resp := &apipb.SiteStatusResponse{
		Site: own.Site, TrustDomain: own.TrustDomain, AnsweredBy: own.NodeId,
		LeaderId: own.LeaderId, LeaderAddress: own.LeaderAddress,
		Services: own.Services, Instances: own.Instances,
	}
	resp.Servers = s.node.ProbeServers(ctx)
	peers, leaderView := s.sitePeers(ctx, own)
	resp.Peers = peers
	resp.Gateways = s.gatewayHealth()
	if ca, err := s.cfg.Authority.CAStatus(); err == nil {
		resp.Ca = ca
	}
	resp.Problems, resp.Verdict = judgeSite(resp, leaderView, s.cfg.Now())
	resp.Healthy = resp.Verdict == VerdictHealthy
	return resp, nil
}

// sitePeers lists the peerings with the leader's runtime view of the
// streams when the leader answers in time (leaderView), this replica's
// otherwise.
func (s operatorService) sitePeers(ctx context.Context, own *apipb.StatusResponse) (peers []*apipb.Peer, leaderView bool) {
	if own.State != "leader" && own.LeaderId != "" {
		fctx, cancel := context.WithTimeout(ctx, siteStatusPeersTimeout)
		r, ok, err := forwardRead(fctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.ListPeersFedResponse, error) {
			return apipb.NewFederationClient(c).List(ctx, &apipb.ListPeersFedRequest{})
		})
		cancel()
		if ok && err == nil {
			return r.Peers, true
		}
	}
	for _, f := range s.store().ForeignBundles() {
		if f.PeerName != "" {
			peers = append(peers, s.peerStatus(PeerOf(f)))
		}
	}
	return peers, own.State == "leader"
}

// gatewayHealth lists the gateways that joined, with their catalog health.
func (s operatorService) gatewayHealth() []*apipb.GatewayHealth {
	st := s.store()
	_, insts, _, _ := st.Service(state.ServiceKey{Namespace: state.GatewayNamespace, Name: state.GatewayService}, false)
	byName := make(map[string]*apipb.Instance, len(insts))
	for _, in := range insts {
		byName[in.Id] = in
	}
	var out []*apipb.GatewayHealth
	for _, g := range st.Gateways() {
		h := &apipb.GatewayHealth{Name: g.Name, Revoked: g.Revoked, Health: "absent"}
		if in, ok := byName[g.Name]; ok {
			h.Health = healthName(in.Health)
			if p := in.Ports[state.GatewayWANPort]; p != 0 {
				h.WanAddress = fmt.Sprintf("%s:%d", in.Address, p)
			}
			n, _ := strconv.ParseUint(in.Meta[GatewayMetaPeerGateways], 10, 32)
			up, _ := strconv.ParseUint(in.Meta[GatewayMetaPeerGatewaysUp], 10, 32)
			h.PeerGateways, h.PeerGatewaysUp = uint32(n), uint32(up)
		}
		out = append(out, h)
	}
	return out
}

func healthName(h apipb.Health) string {
	switch h {
	case apipb.Health_HEALTH_PASSING:
		return "passing"
	case apipb.Health_HEALTH_CRITICAL:
		return "critical"
	}
	return "unknown"
}

// judgeSite names every problem and the verdict they make: unhealthy
// when the site cannot serve writes (no leader, or fewer reachable voters
// than a quorum), degraded when it serves but something is down.
func judgeSite(r *apipb.SiteStatusResponse, leaderView bool, now time.Time) (problems []string, verdict string) {
	unhealthy := false
	bad := func(severe bool, format string, args ...any) {
		problems = append(problems, fmt.Sprintf(format, args...))
		unhealthy = unhealthy || severe
	}
	if r.LeaderId == "" {
		bad(true, "no leader: the servers cannot elect one (see the servers below)")
	}
	voters, reachable := 0, 0
	for _, sv := range r.Servers {
		if sv.Voter {
			voters++
		}
		if !sv.Reachable {
			bad(false, "server %s (%s) is unreachable: %s", sv.Id, sv.Address, sv.Error)
			if sv.Id == r.LeaderId {
				bad(true, "the leader %s is unreachable; an election should follow", sv.Id)
			}
			continue
		}
		if sv.Voter && sv.Status.GetState() != "shutdown" {
			reachable++
		}
		if st := sv.Status; st != nil {
			if !st.Healthy && r.LeaderId != "" {
				bad(false, "server %s is %s without recent contact with the leader", sv.Id, st.State)
			}
			if exp := st.SvidExpires; exp != nil && !exp.AsTime().After(now) {
				bad(false, "server %s's SVID expired at %s: it cannot renew it (check its log)", sv.Id, exp.AsTime().UTC().Format(time.RFC3339))
			}
		}
	}
	if quorum := voters/2 + 1; voters > 0 && reachable < quorum {
		bad(true, "quorum lost: %d of %d voting servers reachable, %d needed", reachable, voters, quorum)
	}
	for _, p := range r.Peers {
		imp := p.GetImports()
		switch {
		case imp.GetState() == apipb.PeerState_PEER_STATE_STALE:
			bad(false, "peer %s is stale: no contact since %s; its services are served as last known", p.Name, lastContact(imp))
		case leaderView && imp.GetState() == apipb.PeerState_PEER_STATE_ACTIVE && !imp.GetConnected():
			bad(false, "peer %s: the replication stream is down (%s)", p.Name, orNone(imp.GetLastError()))
		}
	}
	for _, g := range r.Gateways {
		switch {
		case g.Revoked:
		case g.Health == "absent":
			bad(false, "gateway %s joined but is not in the catalog: it has not sent a heartbeat (is it running?)", g.Name)
		case g.Health != "passing":
			bad(false, "gateway %s is %s: its heartbeats stopped (is it running?)", g.Name, g.Health)
		}
	}
	for _, root := range r.GetCa().GetRoots() {
		if root.Phase == "active" && root.NotAfter != nil && root.NotAfter.AsTime().Sub(now) < caExpiryWarning {
			bad(false, "the active CA root expires at %s: run `strait ca rotate`", root.NotAfter.AsTime().UTC().Format(time.RFC3339))
		}
	}
	switch {
	case unhealthy:
		return problems, VerdictUnhealthy
	case len(problems) > 0:
		return problems, VerdictDegraded
	}
	return nil, VerdictHealthy
}

func lastContact(imp *apipb.ImportStatus) string {
	if imp.GetLastContact() == nil {
		return "never"
	}
	return imp.GetLastContact().AsTime().UTC().Format(time.RFC3339)
}

func orNone(s string) string {
	if s == "" {
		return "no error recorded"
	}
	return s
}
