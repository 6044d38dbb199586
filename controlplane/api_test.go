package controlplane_test

import (
	"context"
	"io"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

func TestAPIRejectsBadInputWithoutPartialWrites(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{})
	cl := c.Client(0)
	ctx := controlplanetest.Ctx(t)
	// A valid service with an invalid instance: nothing may be written.
	_, err := cl.Catalog.Register(ctx, &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "payments", Name: "api", Ports: []*apipb.ServicePort{{Name: "http"}}},
		Instance: &apipb.Instance{Id: "api-1", Address: "not-an-ip", Ports: map[string]uint32{"http": 80}},
	})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("code %s, want InvalidArgument", st.Code())
	}
	var field string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 {
			field = br.FieldViolations[0].Field
		}
	}
	if field != "instance.address" {
		t.Fatalf("field violation %q, want instance.address (message %q)", field, st.Message())
	}
	list, err := cl.Catalog.ListServices(ctx, &apipb.ListServicesRequest{Mode: apipb.ReadMode_READ_MODE_CONSISTENT})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Services) != 0 {
		t.Fatalf("a rejected request left %v behind", list.Services)
	}
	// Oversized requests are refused before decoding.
	big := &apipb.RegisterRequest{Service: &apipb.Service{Name: "big", Meta: map[string]string{"k": string(make([]byte, 2<<20))}}}
	if _, err := cl.Catalog.Register(ctx, big); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("2 MiB request: %v, want ResourceExhausted", err)
	}
	// Unknown service: NotFound.
	if _, err := cl.Catalog.GetService(ctx, &apipb.GetServiceRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("get unknown: %v, want NotFound", err)
	}
}

func recvUntilSynced(t *testing.T, s apipb.Catalog_WatchClient) (changes int, last uint64) {
	t.Helper()
	for {
		ev, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		changes += len(ev.Changes)
		last = ev.Index
		if ev.Synced {
			return changes, last
		}
	}
}

func TestWatchStreamResumes(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{})
	register(t, c.Client(0), "api", "a1")
	c.WaitConverged()
	cl := c.Client(c.Follower()) // watches are served by any server
	ctx, cancel := context.WithCancel(controlplanetest.Ctx(t))
	s, err := cl.Catalog.Watch(ctx, &apipb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := recvUntilSynced(t, s); n != 2 {
		t.Fatalf("initial state had %d changes, want 2 (service, instance)", n)
	}
	register(t, c.Client(0), "api", "a2")
	ev, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.Changes[0].GetInstance().GetId(); got != "a2" {
		t.Fatalf("live change %v, want instance a2", ev)
	}
	cancel()
	if _, err := s.Recv(); err == nil || err == io.EOF {
		t.Logf("stream ended: %v", err)
	}
	// Resume after the last index seen: only the missed change arrives.
	register(t, c.Client(0), "api", "a3")
	s2, err := cl.Catalog.Watch(controlplanetest.Ctx(t), &apipb.WatchRequest{FromIndex: ev.Index})
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev2, err := s2.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev2.Resync {
			t.Fatalf("resumed stream resynchronised (%v); want only the missed change", ev2)
		}
		for _, ch := range ev2.Changes {
			if id := ch.GetInstance().GetId(); id != "a3" {
				t.Fatalf("resumed stream replayed %s, seen before the resume point", id)
			}
			return
		}
	}
}

func TestTTLExpiryAndHeartbeat(t *testing.T) {
	c := controlplanetest.Start(t, 1, controlplanetest.Options{})
	cl := c.Client(0)
	ctx := controlplanetest.Ctx(t)
	_, err := cl.Catalog.Register(ctx, &apipb.RegisterRequest{
		Service:  &apipb.Service{Name: "api"},
		Instance: &apipb.Instance{Id: "a1", Address: "10.0.0.1", Ttl: durationpb.New(time.Second)},
	})
	if err != nil {
		t.Fatal(err)
	}
	health := func() apipb.Health {
		r, err := cl.Catalog.GetService(ctx, &apipb.GetServiceRequest{Name: "api"})
		if err != nil {
			t.Fatal(err)
		}
		return r.Instances[0].Health
	}
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		if h := health(); h != apipb.Health_HEALTH_CRITICAL {
			return status.Errorf(codes.Unknown, "health %s, want critical after missed heartbeats", h)
		}
		return nil
	})
	if _, err := cl.Catalog.Heartbeat(ctx, &apipb.HeartbeatRequest{Service: "api", InstanceId: "a1"}); err != nil {
		t.Fatal(err)
	}
	if h := health(); h != apipb.Health_HEALTH_PASSING {
		t.Fatalf("health %s after heartbeat, want passing", h)
	}
	// Heartbeats for instances without a TTL are a clear error.
	register(t, cl, "web", "w1")
	if _, err := cl.Catalog.Heartbeat(ctx, &apipb.HeartbeatRequest{Namespace: "payments", Service: "web", InstanceId: "w1"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("heartbeat without ttl: %v, want FailedPrecondition", err)
	}
}
