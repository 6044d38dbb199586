package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/demo"
)

// TestPingAcrossSites runs strait ping end to end on two federated sites
// in this process (the demo: servers, mesh DNS, a gateway each, an HTTP
// service exported and allowed): a reply through both gateways, then the
// peer's deny named as the reason the connection is refused, and a name
// that does not resolve failing at the DNS stage.
func TestPingAcrossSites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d, err := demo.Start(ctx, demo.Options{Sites: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("demo: %v", err)
		}
	})
	east, west := d.Sites[0], d.Sites[1]
	env := map[string]string{
		"STRAIT_ADDR": east.Servers[0], "STRAIT_TOKEN": east.ManagementToken, "STRAIT_CA_FILE": east.CAFile,
		"STRAIT_DEV_CONTEXT": filepath.Join(t.TempDir(), "none.json"),
	}
	name := west.Service + "." + demo.Namespace + "." + west.Name + ".mesh"
	vip, err := d.VirtualIP(ctx, east, west)
	if err != nil {
		t.Fatal(err)
	}
	ping := func(args ...string) (int, pingResult, string) {
		t.Helper()
		code, out, errs := run(t, env, append([]string{"ping", "--json", "--wait", "10s"}, args...)...)
		var r pingResult
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("ping --json: exit %d, %q: %v\n%s", code, errs, err, out)
		}
		return code, r, errs
	}

	code, r, errs := ping(name)
	if code != 0 || r.Outcome != "replied" || r.Address != vip || r.Port != west.ServicePort || r.DNSServer != east.DNSAddr || r.From != east.Name {
		t.Fatalf("allowed: exit %d, %+v, %q", code, r, errs)
	}
	if r.Intention == nil || !r.Intention.Checked || !r.Intention.Allowed || !strings.Contains(r.Intention.Matched, "allow "+east.Name) {
		t.Fatalf("allowed: intention %+v", r.Intention)
	}
	if len(r.LocalGateways) != 1 || len(r.PeerGateways) != 1 || r.PeerGateways[0] != west.GatewayWAN {
		t.Fatalf("allowed: gateways %q -> %q, want -> %s", r.LocalGateways, r.PeerGateways, west.GatewayWAN)
	}
	code, out, _ := run(t, env, "ping", name)
	t.Logf("strait ping:\n%s", out)
	if code != 0 || !strings.Contains(out, "allowed by "+west.Name) || !strings.Contains(out, "round trip") {
		t.Fatalf("text: exit %d\n%s", code, out)
	}

	// strait status shows the peer and the gateway as the ping found them.
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		code, out, errs := run(t, env, "status", "--json")
		var st struct {
			Verdict string
			Peers   []struct {
				Name    string
				Imports struct {
					State     string
					Connected bool
					Gateways  []string
				}
			}
			Gateways []struct {
				Name           string
				WanAddress     string `json:"wan_address"`
				Health         string
				PeerGateways   uint32 `json:"peer_gateways"`
				PeerGatewaysUp uint32 `json:"peer_gateways_up"`
			}
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return fmt.Errorf("status --json: exit %d, %q: %v", code, errs, err)
		}
		if code != 0 || st.Verdict != "healthy" || len(st.Peers) != 1 || st.Peers[0].Name != west.Name || st.Peers[0].Imports.State != "PEER_STATE_ACTIVE" ||
			!st.Peers[0].Imports.Connected || len(st.Gateways) != 1 || st.Gateways[0].Health != "passing" || st.Gateways[0].WanAddress != east.GatewayWAN {
			return fmt.Errorf("status: exit %d, %+v", code, st)
		}
		// The ping opened a tunnel to west's one gateway.
		if g := st.Gateways[0]; g.PeerGateways != 1 || g.PeerGatewaysUp != 1 {
			return fmt.Errorf("status: gateway tunnels %d/%d, want 1/1", g.PeerGatewaysUp, g.PeerGateways)
		}
		if _, out, _ := run(t, env, "status"); !strings.Contains(out, "TUNNELS") || !strings.Contains(out, " 1/1") {
			return fmt.Errorf("status text shows no tunnels:\n%s", out)
		}
		return nil
	})

	// The peer denies this site: the probe fails at the carry stage and
	// says the peer denies it.
	wcl, err := apiclient.Dial(apiclient.Config{Addr: west.Servers[0], Token: west.ManagementToken, CAFile: west.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	defer wcl.Close()
	if _, err := wcl.Intentions.Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{
		Source: east.Name, Destination: demo.Namespace + "/" + west.Service, Action: apipb.IntentionAction_INTENTION_ACTION_DENY}}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		code, r, errs = ping(name)
		// The gateways and the servers answering the check each apply
		// the deny on their own time.
		if code != 1 || r.FailedStage != "carry" || r.Intention == nil || !r.Intention.Checked || r.Intention.Allowed {
			return fmt.Errorf("denied: exit %d, %+v, intention %+v", code, r, r.Intention)
		}
		return nil
	})
	if !strings.Contains(r.Intention.Matched, "deny "+east.Name) || !strings.Contains(r.Error, "denies connections from "+east.Name) || !strings.Contains(errs, "failed at carry") {
		t.Fatalf("denied: %+v, %q", r, errs)
	}

	code, r, errs = ping("nope." + demo.Namespace + "." + west.Name + ".mesh")
	if code != 1 || r.FailedStage != "dns" || !strings.Contains(errs, "failed at dns") {
		t.Fatalf("unknown name: exit %d, %+v, %q", code, r, errs)
	}
	if code, _, errs := run(t, env, "ping", "not-a-mesh-name"); code != 2 {
		t.Fatalf("bad name: exit %d, %q", code, errs)
	}
}
