package replication

import (
	"context"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// Catalog is what an Exporter reads of its site's replicated state: the
// local catalog, its changes, the exports and the peerings. The server's
// store (controlplane/state.Store) is one; this package does not import
// it.
type Catalog interface {
	// Index is the Raft index of the last applied change.
	Index() uint64
	// Subscribe starts a watch of the catalog after fromIndex (a replay,
	// or a resync and the full state; then an event with synced set).
	Subscribe(fromIndex uint64) Watch
	// ExportsChanged and IdentityChanged return a channel closed at the
	// next change of exports, and of peerings (among others).
	ExportsChanged() <-chan struct{}
	IdentityChanged() <-chan struct{}
	// PeerName is the local name of the peer of a trust domain; "" when
	// it is not a peer.
	PeerName(trustDomain string) string
	// ExportedServices lists the local services exported to a peer,
	// sorted; ExportedTo reports whether one is.
	ExportedServices(peer string) []ServiceKey
	ExportedTo(k ServiceKey, peer string) bool
	// Service returns a service and its instances (only the passing ones
	// when asked), the index, and whether it exists.
	Service(k ServiceKey, passingOnly bool) (*apipb.Service, []*apipb.Instance, uint64, bool)
	Instance(k *apipb.InstanceKey) (*apipb.Instance, bool)
	// GatewayAddresses lists the WAN addresses of this site's passing
	// gateways, sorted.
	GatewayAddresses() []string
}

// Watch is a catalog watch: Next returns the next event, waiting for one
// until ctx ends. (An alias of an unnamed interface, so that the store
// can declare the same type without importing this package.)
type Watch = interface {
	Next(ctx context.Context) (*apipb.WatchEvent, error)
}

// ServiceKey identifies a service: a local one when Peer is empty. (An
// alias of an unnamed struct, the same type as the store's key, which can
// so be passed between them without either importing the other.)
type ServiceKey = struct{ Peer, Namespace, Name string }

func keyOf(svc *apipb.Service) ServiceKey { return ServiceKey{svc.Peer, svc.Namespace, svc.Name} }

func keyOfInstance(in *apipb.Instance) ServiceKey {
	return ServiceKey{in.Peer, in.Namespace, in.Service}
}

// gatewayKey is the service this site's gateways register as: their "wan"
// port is what peers dial, and the exporter announces them.
var gatewayKey = ServiceKey{Namespace: "strait", Name: "gateway"}
