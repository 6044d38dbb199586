package controlplane_test

import (
	"testing"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
)

func TestSmoke(t *testing.T) {
	c := controlplanetest.Start(t, 3, controlplanetest.Options{})
	cl := c.Client(c.Follower())
	ctx := controlplanetest.Ctx(t)
	_, err := cl.Catalog.Register(ctx, &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "payments", Name: "api", Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
		Instance: &apipb.Instance{Id: "api-1", Address: "10.0.0.1", Ports: map[string]uint32{"http": 8080}},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cl.Catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: "payments", Name: "api", Mode: apipb.ReadMode_READ_MODE_CONSISTENT})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Instances) != 1 {
		t.Fatalf("instances %v", resp.Instances)
	}
}
