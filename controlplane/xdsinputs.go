package controlplane

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/xds"
	"github.com/straitmesh/strait/trust/bundleendpoint"
)

// xdsInputs reads what the gateways' configuration is built from.
func (s *Server) xdsInputs() (xds.Inputs, error) {
	if s.store.Site() == nil {
		// At start, until Raft has applied the bootstrap (or replayed the
		// log to it): nothing to build yet, and nothing wrong.
		return xds.Inputs{}, fmt.Errorf("site not bootstrapped yet: %w", xds.ErrNotReady)
	}
	own, err := s.OwnBundle()
	if err != nil {
		return xds.Inputs{}, err
	}
	in := xds.Inputs{TrustDomain: s.id.td.Name(), Domain: s.cfg.DNSDomain, CAs: own.X509Authorities(), Intentions: s.store.Intentions()}
	for _, f := range s.store.ForeignBundles() {
		if f.PeerName == "" {
			continue
		}
		td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
		if err != nil {
			continue
		}
		b, err := bundleendpoint.Parse(td, f.Bundle)
		if err != nil {
			s.log.Warn("xds: peer bundle unreadable; its gateways cannot be verified", "peer", f.PeerName, "err", err)
			continue
		}
		p := xds.Peer{Name: f.PeerName, TrustDomain: f.TrustDomain, CAs: b.X509Authorities()}
		if imp, ok := s.store.PeerImport(f.PeerName); ok {
			p.Gateways = imp.Gateways
		}
		in.Peers = append(in.Peers, p)
	}
	// An export's peer list travels with the service: its ingress chain
	// admits those peers' gateways only.
	exported := make(map[state.ServiceKey][]string)
	for _, e := range s.store.Exports() {
		if len(e.To) > 0 {
			exported[state.ServiceKey{Namespace: e.Namespace, Name: e.Service}] = e.To
		}
	}
	sums, _ := s.store.ServiceSummaries("")
	for _, sum := range sums {
		k := state.KeyOf(sum.Service)
		if k.Peer == "" && exported[k] == nil {
			continue
		}
		svc, insts, _, ok := s.store.Service(k, true)
		if !ok {
			continue
		}
		if k.Peer != "" {
			in.Imports = append(in.Imports, xds.Service{Def: svc, Instances: insts})
		} else {
			in.Exports = append(in.Exports, xds.Service{Def: svc, Instances: insts, To: exported[k]})
		}
	}
	return in, nil
}

// xdsChanged are the channels that close when the inputs change.
func (s *Server) xdsChanged() []<-chan struct{} {
	return []<-chan struct{}{s.store.CatalogChanged(), s.store.IdentityChanged(), s.store.ExportsChanged(), s.store.MeshChanged()}
}
