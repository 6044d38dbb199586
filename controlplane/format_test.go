package controlplane_test

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// TestNewerLogFormatIsVisible: a server that meets a command in a log
// format newer than it understands stops applying the log (see
// state.ErrFormat); it says so in its status (not healthy) and in
// strait_state_halted, instead of serving a frozen state silently.
func TestNewerLogFormatIsVisible(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Registry: reg})
	register(t, c.Client(0), "api", "a1")
	srv := c.Nodes[0].Server
	if !srv.Status().Healthy {
		t.Fatal("unhealthy before the newer command")
	}
	// What a newer server would write; this one's Apply stamps its own
	// format, so the entry goes to Raft directly.
	b, err := proto.Marshal(&statepb.Command{Format: state.CommandFormat + 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Raft().Apply(b, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if err := srv.Store().Halted(); err == nil {
			return errors.New("the store has not halted")
		}
		return nil
	})
	if srv.Status().Healthy {
		t.Error("a halted server reports itself healthy")
	}
	got := 0.0
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "strait_state_halted" {
			got = mf.Metric[0].GetGauge().GetValue()
		}
	}
	if got != 1 {
		t.Errorf("strait_state_halted = %v, want 1", got)
	}
}
