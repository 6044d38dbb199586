package api

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// TestJudgeSite: each kind of trouble gives its verdict and says what it
// is. (The servers' part runs for real in the CLI's status test; this
// covers the peers, gateways and CA a three-server test does not have.)
func TestJudgeSite(t *testing.T) {
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	up := func(id, state string) *apipb.ServerHealth {
		return &apipb.ServerHealth{Id: id, Voter: true, Reachable: true, Status: &apipb.StatusResponse{State: state, Healthy: true,
			SvidExpires: timestamppb.New(now.Add(48 * time.Hour))}}
	}
	down := &apipb.ServerHealth{Id: "s2", Voter: true, Error: "connection refused"}
	site := func(f func(r *apipb.SiteStatusResponse)) *apipb.SiteStatusResponse {
		r := &apipb.SiteStatusResponse{LeaderId: "s0", Servers: []*apipb.ServerHealth{up("s0", "leader"), up("s1", "follower"), up("s2", "follower")},
			Ca: &apipb.CAStatusResponse{Roots: []*apipb.CARootStatus{{Phase: "active", NotAfter: timestamppb.New(now.Add(365 * 24 * time.Hour))}}}}
		if f != nil {
			f(r)
		}
		return r
	}
	peer := func(state apipb.PeerState, connected bool) *apipb.Peer {
		return &apipb.Peer{Name: "west", Imports: &apipb.ImportStatus{State: state, Connected: connected, LastError: "EOF"}}
	}
	tests := []struct {
		name       string
		r          *apipb.SiteStatusResponse
		leaderView bool
		verdict    string
		problem    string
	}{
		{"all well", site(nil), true, VerdictHealthy, ""},
		{"a server down", site(func(r *apipb.SiteStatusResponse) { r.Servers[2] = down }), true, VerdictDegraded, "server s2"},
		{"quorum lost", site(func(r *apipb.SiteStatusResponse) {
			r.Servers[1] = &apipb.ServerHealth{Id: "s1", Voter: true, Error: "timeout"}
			r.Servers[2] = down
		}), true, VerdictUnhealthy, "quorum lost: 1 of 3"},
		{"no leader", site(func(r *apipb.SiteStatusResponse) { r.LeaderId = "" }), true, VerdictUnhealthy, "no leader"},
		{"leader unreachable", site(func(r *apipb.SiteStatusResponse) { r.LeaderId = "s2"; r.Servers[2] = down }), true, VerdictUnhealthy, "the leader s2 is unreachable"},
		{"peer stale", site(func(r *apipb.SiteStatusResponse) {
			r.Peers = []*apipb.Peer{peer(apipb.PeerState_PEER_STATE_STALE, false)}
		}), true, VerdictDegraded, "peer west is stale"},
		{"peer stream down", site(func(r *apipb.SiteStatusResponse) {
			r.Peers = []*apipb.Peer{peer(apipb.PeerState_PEER_STATE_ACTIVE, false)}
		}), true, VerdictDegraded, "stream is down (EOF)"},
		{"peer stream unknown off the leader", site(func(r *apipb.SiteStatusResponse) {
			r.Peers = []*apipb.Peer{peer(apipb.PeerState_PEER_STATE_ACTIVE, false)}
		}), false, VerdictHealthy, ""},
		{"peer pending", site(func(r *apipb.SiteStatusResponse) {
			r.Peers = []*apipb.Peer{peer(apipb.PeerState_PEER_STATE_PENDING, false)}
		}), true, VerdictHealthy, ""},
		{"gateway critical", site(func(r *apipb.SiteStatusResponse) {
			r.Gateways = []*apipb.GatewayHealth{{Name: "gw", Health: "critical"}}
		}), true, VerdictDegraded, "gateway gw is critical"},
		{"gateway never heard from", site(func(r *apipb.SiteStatusResponse) {
			r.Gateways = []*apipb.GatewayHealth{{Name: "gw", Health: "absent"}}
		}), true, VerdictDegraded, "not in the catalog"},
		{"gateway revoked", site(func(r *apipb.SiteStatusResponse) {
			r.Gateways = []*apipb.GatewayHealth{{Name: "gw", Health: "absent", Revoked: true}}
		}), true, VerdictHealthy, ""},
		{"server SVID expired", site(func(r *apipb.SiteStatusResponse) {
			r.Servers[1].Status.SvidExpires = timestamppb.New(now.Add(-time.Minute))
		}), true, VerdictDegraded, "SVID expired"},
		{"CA root expiring", site(func(r *apipb.SiteStatusResponse) { r.Ca.Roots[0].NotAfter = timestamppb.New(now.Add(24 * time.Hour)) }), true, VerdictDegraded, "strait ca rotate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			problems, verdict := judgeSite(tt.r, tt.leaderView, now)
			if verdict != tt.verdict {
				t.Fatalf("verdict %s, want %s (problems %q)", verdict, tt.verdict, problems)
			}
			if tt.problem == "" && len(problems) > 0 || tt.problem != "" && !strings.Contains(strings.Join(problems, "\n"), tt.problem) {
				t.Fatalf("problems %q, want one saying %q", problems, tt.problem)
			}
		})
	}
}
