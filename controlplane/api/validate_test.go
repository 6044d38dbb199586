package api

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
)

func validReq() *apipb.RegisterRequest {
	return &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "payments", Name: "api", Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
		Instance: &apipb.Instance{Id: "api-1", Address: "10.0.0.1", Ports: map[string]uint32{"http": 8080}},
	}
}

func TestValidateRegister(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name   string
		mutate func(*apipb.RegisterRequest)
		field  string // empty: valid
	}{
		{"valid", func(r *apipb.RegisterRequest) {}, ""},
		{"service only", func(r *apipb.RegisterRequest) { r.Instance = nil }, ""},
		{"default namespace", func(r *apipb.RegisterRequest) { r.Service.Namespace = "" }, ""},
		{"ipv6 address", func(r *apipb.RegisterRequest) { r.Instance.Address = "fd00::1" }, ""},
		{"no service", func(r *apipb.RegisterRequest) { r.Service = nil }, "service"},
		{"uppercase name", func(r *apipb.RegisterRequest) { r.Service.Name = "API" }, "service.name"},
		{"name too long", func(r *apipb.RegisterRequest) { r.Service.Name = long }, "service.name"},
		{"name with dot", func(r *apipb.RegisterRequest) { r.Service.Name = "a.b" }, "service.name"},
		{"leading hyphen", func(r *apipb.RegisterRequest) { r.Service.Namespace = "-ns" }, "service.namespace"},
		{"duplicate port", func(r *apipb.RegisterRequest) {
			r.Service.Ports = append(r.Service.Ports, &apipb.ServicePort{Name: "http"})
		}, "service.ports[1].name"},
		{"unknown protocol", func(r *apipb.RegisterRequest) { r.Service.Ports[0].Protocol = 42 }, "service.ports[0].protocol"},
		{"too many meta", func(r *apipb.RegisterRequest) {
			r.Service.Meta = map[string]string{}
			for i := 0; i <= MaxMeta; i++ {
				r.Service.Meta[strings.Repeat("k", i+1)] = "v"
			}
		}, "service.meta"},
		{"client-set index", func(r *apipb.RegisterRequest) { r.Service.ModifyIndex = 3 }, "service.create_index"},
		{"instance of another service", func(r *apipb.RegisterRequest) { r.Instance.Service = "web" }, "instance.service"},
		{"missing instance id", func(r *apipb.RegisterRequest) { r.Instance.Id = "" }, "instance.id"},
		{"bad address", func(r *apipb.RegisterRequest) { r.Instance.Address = "example.com" }, "instance.address"},
		{"unspecified address", func(r *apipb.RegisterRequest) { r.Instance.Address = "0.0.0.0" }, "instance.address"},
		{"zoned address", func(r *apipb.RegisterRequest) { r.Instance.Address = "fe80::1%eth0" }, "instance.address"},
		{"port zero", func(r *apipb.RegisterRequest) { r.Instance.Ports["http"] = 0 }, "instance.ports[http]"},
		{"port too high", func(r *apipb.RegisterRequest) { r.Instance.Ports["http"] = 70000 }, "instance.ports[http]"},
		{"undefined port", func(r *apipb.RegisterRequest) { r.Instance.Ports["grpc"] = 9090 }, "instance.ports[grpc]"},
		{"ttl too short", func(r *apipb.RegisterRequest) { r.Instance.Ttl = durationpb.New(time.Millisecond) }, "instance.ttl"},
		{"ttl too long", func(r *apipb.RegisterRequest) { r.Instance.Ttl = durationpb.New(48 * time.Hour) }, "instance.ttl"},
		{"bad zone", func(r *apipb.RegisterRequest) { r.Instance.Zone = "US_EAST" }, "instance.zone"},
		{"unknown health", func(r *apipb.RegisterRequest) { r.Instance.Health = 9 }, "instance.health"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validReq()
			tt.mutate(r)
			err := validateRegister(r)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("rejected a valid request: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err %v, want a FieldError on %s", err, tt.field)
			}
			if fe.Field != tt.field {
				t.Fatalf("field %q (%s), want %q", fe.Field, fe.Rule, tt.field)
			}
			if fe.Rule == "" {
				t.Fatal("rejection does not say which rule was broken")
			}
		})
	}
}

// FuzzRegisterRequest decodes arbitrary bytes as a request. Validation must
// never panic, and whatever it accepts the state machine must apply.
func FuzzRegisterRequest(f *testing.F) {
	b, _ := proto.Marshal(validReq())
	f.Add(b)
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req apipb.RegisterRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return
		}
		if err := validateRegister(&req); err != nil {
			return
		}
		st := state.NewStore(0)
		_, err := st.ApplyCommand(1, state.RegisterCommand(&req))
		if err != nil {
			t.Fatalf("validated request rejected by the state machine: %v\n%v", err, &req)
		}
	})
}

func TestValidateEntry(t *testing.T) {
	valid := func() *apipb.WorkloadEntry {
		return &apipb.WorkloadEntry{Namespace: "payments", Service: "api", Agent: "node1",
			Selectors: []*apipb.Selector{{Type: "unix", Key: "uid", Value: "1001"}}}
	}
	tests := []struct {
		name   string
		mutate func(*apipb.WorkloadEntry)
		field  string
	}{
		{"valid", func(e *apipb.WorkloadEntry) {}, ""},
		{"every agent", func(e *apipb.WorkloadEntry) { e.Agent = "*" }, ""},
		{"path selector", func(e *apipb.WorkloadEntry) {
			e.Selectors = append(e.Selectors, &apipb.Selector{Type: "unix", Key: "path", Value: "/usr/bin/api"})
		}, ""},
		{"no agent", func(e *apipb.WorkloadEntry) { e.Agent = "" }, "entry.agent"},
		{"bad service", func(e *apipb.WorkloadEntry) { e.Service = "Api" }, "service"},
		{"no selectors", func(e *apipb.WorkloadEntry) { e.Selectors = nil }, "entry.selectors"},
		{"unknown type", func(e *apipb.WorkloadEntry) { e.Selectors[0].Type = "k8s" }, "entry.selectors[0].type"},
		{"unknown key", func(e *apipb.WorkloadEntry) { e.Selectors[0].Key = "user" }, "entry.selectors[0].key"},
		{"non-numeric uid", func(e *apipb.WorkloadEntry) { e.Selectors[0].Value = "root" }, "entry.selectors[0].value"},
		{"relative path", func(e *apipb.WorkloadEntry) {
			e.Selectors[0] = &apipb.Selector{Type: "unix", Key: "path", Value: "bin/api"}
		}, "entry.selectors[0].value"},
		{"unclean path", func(e *apipb.WorkloadEntry) {
			e.Selectors[0] = &apipb.Selector{Type: "unix", Key: "path", Value: "/usr/../bin/api"}
		}, "entry.selectors[0].value"},
		{"ttl too short", func(e *apipb.WorkloadEntry) { e.SvidTtl = durationpb.New(time.Second) }, "entry.svid_ttl"},
		{"client-set id", func(e *apipb.WorkloadEntry) { e.Id = "x" }, "entry.id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := valid()
			tt.mutate(e)
			err := validateEntry(e)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("err %v, want a FieldError on %s", err, tt.field)
			}
		})
	}
}
