// Package cloud holds what cloud integrations (cloud/aws) need of a
// server, so that they depend on interfaces, not on the control plane.
package cloud

import "context"

// Instance is one instance of a local service, as catalog sync sees it:
// one address and one port.
type Instance struct {
	Namespace, Service, ID, Address string
	// PortName and Port: the instance's lowest-named port.
	PortName string
	Port     uint32
	Meta     map[string]string
	Passing  bool
	// ServiceMeta is set on the service when the instance is registered.
	ServiceMeta map[string]string
}

// Service is a local service, as catalog sync sees it.
type Service struct {
	Namespace, Name string
	Meta            map[string]string
}

// Catalog is a site's local catalog, written through Raft (leader only).
type Catalog interface {
	// LocalInstances lists every instance of local (not imported) services.
	LocalInstances() []Instance
	// RegisterInstance registers or updates an instance of a TCP service.
	RegisterInstance(ctx context.Context, in Instance) error
	// DeregisterInstance removes an instance.
	DeregisterInstance(ctx context.Context, namespace, service, id string) error
	// LocalServices lists local services, with or without instances.
	LocalServices() []Service
	// DeregisterService removes a service and its instances.
	DeregisterService(ctx context.Context, namespace, name string) error
	// CatalogChanged is closed at the next change.
	CatalogChanged() <-chan struct{}
}

// BundleSource is a site's own trust bundle.
type BundleSource interface {
	// BundleJSON is the bundle in the SPIFFE format and its sequence.
	BundleJSON() ([]byte, uint64, error)
	// BundleChanged is closed when it may have changed.
	BundleChanged() <-chan struct{}
}
