package gateway_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/internal/wan"
	"github.com/straitmesh/strait/trust/enroll"
)

// TestRevokedGatewayStopsAndRejoins: a running gateway that is revoked
// stops (rather than retrying forever), says why and what to do, and sets
// its identity aside so that a new token joins it again from the same
// data dir.
func TestRevokedGatewayStopsAndRejoins(t *testing.T) {
	s := startSite(t, "east", wan.New(0))
	s.startGateway(t, "gw", nil)
	ctx := controlplanetest.Ctx(t)
	if _, err := s.Client(0).Gateway.Revoke(ctx, &apipb.RevokeGatewayRequest{Name: "gw"}); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-s.gwDone:
		s.gwDone <- err // for the cleanup's stop
	case <-time.After(20 * time.Second):
		t.Fatal("the revoked gateway still runs 20s after its revocation")
	}
	if !errors.Is(err, enroll.ErrRevoked) || !strings.Contains(err.Error(), "strait gateway revoke gw") || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("revoked gateway's error: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.gwDir, "gateway.json.revoked")); err != nil {
		t.Fatalf("revoked identity not set aside: %v", err)
	}
	// A new token joins it again from the same data dir, and it serves.
	s.startGateway(t, "gw", nil)
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		list, err := s.Client(0).Gateway.List(ctx, &apipb.ListGatewaysRequest{})
		if err != nil {
			return err
		}
		if len(list.Gateways) != 1 || list.Gateways[0].Revoked {
			return errors.New("the gateway did not join again")
		}
		return nil
	})
}
