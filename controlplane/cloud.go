package controlplane

import (
	"context"
	"sort"

	"github.com/straitmesh/strait/cloud"
	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
)

// A LeaderTask runs on the leader for as long as it leads, with a context
// that ends when leadership does (cloud integrations: catalog sync, bundle
// publishing). Its error is logged; it runs again on the next leadership.
type LeaderTask struct {
	Name string
	Run  func(ctx context.Context, s *Server) error
}

// runLeaderTasks runs the configured tasks until ctx ends.
func (s *Server) runLeaderTasks(ctx context.Context) {
	done := make(chan struct{}, len(s.cfg.LeaderTasks))
	for _, t := range s.cfg.LeaderTasks {
		go func() {
			defer func() { done <- struct{}{} }()
			if err := t.Run(ctx, s); err != nil && ctx.Err() == nil {
				s.log.Error("leader task stopped", "task", t.Name, "err", err)
			}
		}()
	}
	for range s.cfg.LeaderTasks {
		<-done
	}
}

var (
	_ cloud.Catalog      = (*Server)(nil)
	_ cloud.BundleSource = (*Server)(nil)
)

// BundleJSON is the site's trust bundle in the SPIFFE bundle format (what
// the bundle endpoint serves), with its sequence number.
func (s *Server) BundleJSON() ([]byte, uint64, error) { return s.ownBundleDoc() }

// BundleChanged is closed when the site's CA roots or JWT keys change.
func (s *Server) BundleChanged() <-chan struct{} { return s.store.IdentityChanged() }

// CatalogChanged is closed at the next catalog change.
func (s *Server) CatalogChanged() <-chan struct{} { return s.store.CatalogChanged() }

// LocalInstances lists every instance of local services, sorted.
func (s *Server) LocalInstances() []cloud.Instance {
	sums, _ := s.store.ServiceSummaries("")
	var out []cloud.Instance
	for _, sum := range sums {
		svc := sum.Service
		if svc.Peer != "" {
			continue
		}
		_, insts, _, ok := s.store.Service(state.ServiceKey{Namespace: svc.Namespace, Name: svc.Name}, false)
		if !ok {
			continue
		}
		for _, in := range insts {
			li := cloud.Instance{Namespace: svc.Namespace, Service: svc.Name, ID: in.Id, Address: in.Address, Meta: in.Meta,
				Passing: in.Health == apipb.Health_HEALTH_PASSING}
			names := make([]string, 0, len(in.Ports))
			for n := range in.Ports {
				names = append(names, n)
			}
			sort.Strings(names)
			if len(names) > 0 {
				li.PortName, li.Port = names[0], in.Ports[names[0]]
			}
			out = append(out, li)
		}
	}
	return out
}

// RegisterInstance registers (or updates) an instance of a TCP service
// with one port, validated as an API registration would be. Leader only.
func (s *Server) RegisterInstance(ctx context.Context, li cloud.Instance) error {
	health := apipb.Health_HEALTH_CRITICAL
	if li.Passing {
		health = apipb.Health_HEALTH_PASSING
	}
	req := &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: li.Namespace, Name: li.Service, Meta: li.ServiceMeta, Ports: []*apipb.ServicePort{{Name: li.PortName, Protocol: apipb.Protocol_PROTOCOL_TCP}}},
		Instance: &apipb.Instance{Id: li.ID, Address: li.Address, Ports: map[string]uint32{li.PortName: li.Port}, Meta: li.Meta, Health: health},
	}
	if err := api.ValidateRegister(req); err != nil {
		return err
	}
	_, _, err := s.Apply(ctx, state.RegisterCommand(req))
	return err
}

// LocalServices lists local services.
func (s *Server) LocalServices() []cloud.Service {
	sums, _ := s.store.ServiceSummaries("")
	var out []cloud.Service
	for _, sum := range sums {
		if svc := sum.Service; svc.Peer == "" {
			out = append(out, cloud.Service{Namespace: svc.Namespace, Name: svc.Name, Meta: svc.Meta})
		}
	}
	return out
}

// DeregisterService removes a service and its instances. Leader only.
func (s *Server) DeregisterService(ctx context.Context, namespace, name string) error {
	return s.DeregisterInstance(ctx, namespace, name, "")
}

// DeregisterInstance removes an instance (the whole service when id is
// empty). Leader only.
func (s *Server) DeregisterInstance(ctx context.Context, namespace, service, id string) error {
	_, _, err := s.Apply(ctx, state.DeregisterCommand(&apipb.DeregisterRequest{
		Namespace: namespace, Service: service, InstanceId: id}))
	return err
}
