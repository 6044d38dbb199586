package controlplane

import (
	"context"
	"sort"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/cloud"
	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// A LeaderTask runs on the leader for as long as it leads, with a context
// that ends when leadership does (cloud integrations: catalog sync, bundle
// publishing). Its error is logged; it runs again on the next leadership.
type LeaderTask struct {
	Name string
	Run  func(ctx context.Context, site *CloudSite) error
}

// CloudSite is the site as a cloud integration sees it (cloud.Catalog and
// cloud.BundleSource): the local catalog, registered into through Raft,
// and the site's trust bundle. Writes are leader only, which a
// LeaderTask is.
type CloudSite struct {
	store *state.Store
	raft  interface {
		Apply(context.Context, *statepb.Command) (any, uint64, error)
	}
	td     func() spiffeid.TrustDomain
	site   func() string
	bundle func() ([]byte, uint64, error)
}

var (
	_ cloud.Catalog      = (*CloudSite)(nil)
	_ cloud.BundleSource = (*CloudSite)(nil)
)

// newCloudSite is the adapter the server's LeaderTasks get.
func newCloudSite(s *Server) *CloudSite {
	return &CloudSite{store: s.store, raft: s.node, td: s.TrustDomain, site: s.Site, bundle: s.ownBundleDoc}
}

// TrustDomain is the site's trust domain.
func (c *CloudSite) TrustDomain() spiffeid.TrustDomain { return c.td() }

// Site is the site's name.
func (c *CloudSite) Site() string { return c.site() }

// BundleJSON is the site's trust bundle in the SPIFFE bundle format (what
// the bundle endpoint serves), with its sequence number.
func (c *CloudSite) BundleJSON() ([]byte, uint64, error) { return c.bundle() }

// BundleChanged is closed when the site's CA roots or JWT keys change.
func (c *CloudSite) BundleChanged() <-chan struct{} { return c.store.IdentityChanged() }

// CatalogChanged is closed at the next catalog change.
func (c *CloudSite) CatalogChanged() <-chan struct{} { return c.store.CatalogChanged() }

// LocalInstances lists every instance of local services, sorted.
func (c *CloudSite) LocalInstances() []cloud.Instance {
	sums, _ := c.store.ServiceSummaries("")
	var out []cloud.Instance
	for _, sum := range sums {
		svc := sum.Service
		if svc.Peer != "" {
			continue
		}
		_, insts, _, ok := c.store.Service(state.ServiceKey{Namespace: svc.Namespace, Name: svc.Name}, false)
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
func (c *CloudSite) RegisterInstance(ctx context.Context, li cloud.Instance) error {
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
	_, _, err := c.raft.Apply(ctx, state.RegisterCommand(req))
	return err
}

// LocalServices lists local services.
func (c *CloudSite) LocalServices() []cloud.Service {
	sums, _ := c.store.ServiceSummaries("")
	var out []cloud.Service
	for _, sum := range sums {
		if svc := sum.Service; svc.Peer == "" {
			out = append(out, cloud.Service{Namespace: svc.Namespace, Name: svc.Name, Meta: svc.Meta})
		}
	}
	return out
}

// DeregisterService removes a service and its instances. Leader only.
func (c *CloudSite) DeregisterService(ctx context.Context, namespace, name string) error {
	return c.DeregisterInstance(ctx, namespace, name, "")
}

// DeregisterInstance removes an instance (the whole service when id is
// empty). Leader only.
func (c *CloudSite) DeregisterInstance(ctx context.Context, namespace, service, id string) error {
	_, _, err := c.raft.Apply(ctx, state.DeregisterCommand(&apipb.DeregisterRequest{
		Namespace: namespace, Service: service, InstanceId: id}))
	return err
}
