package xds

import (
	"fmt"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
)

type validator interface{ ValidateAll() error }

// Validate checks a resource against Envoy's own constraints (the
// protoc-gen-validate rules of its API), including every typed_config it
// carries, unpacked: what passes here, Envoy accepts.
func Validate(m types.Resource) error {
	v, ok := m.(validator)
	if !ok {
		return fmt.Errorf("%T has no validation", m)
	}
	if err := v.ValidateAll(); err != nil {
		return err
	}
	switch r := m.(type) {
	case *listener.Listener:
		if al := r.GetApiListener(); al != nil {
			if err := validateAPIListener(al.GetApiListener()); err != nil {
				return fmt.Errorf("api listener: %w", err)
			}
		}
		for _, fc := range r.FilterChains {
			if err := validateSocket(fc.TransportSocket); err != nil {
				return fmt.Errorf("filter chain %q: %w", fc.Name, err)
			}
			for _, f := range fc.Filters {
				if err := validateAny(f.GetTypedConfig()); err != nil {
					return fmt.Errorf("filter chain %q, filter %s: %w", fc.Name, f.Name, err)
				}
			}
		}
	case *cluster.Cluster:
		if err := validateSocket(r.TransportSocket); err != nil {
			return err
		}
	}
	return nil
}

// validateAPIListener checks a proxyless client's HttpConnectionManager
// and each of its HTTP filters.
func validateAPIListener(a *anypb.Any) error {
	if err := validateAny(a); err != nil {
		return err
	}
	var m hcm.HttpConnectionManager
	if err := a.UnmarshalTo(&m); err != nil {
		return fmt.Errorf("want an HttpConnectionManager: %w", err)
	}
	if len(m.HttpFilters) == 0 {
		return fmt.Errorf("no HTTP filters (the router must be last)")
	}
	for _, f := range m.HttpFilters {
		if err := validateAny(f.GetTypedConfig()); err != nil {
			return fmt.Errorf("http filter %s: %w", f.Name, err)
		}
	}
	return nil
}

func validateSocket(ts *core.TransportSocket) error {
	if ts == nil {
		return nil
	}
	if err := validateAny(ts.GetTypedConfig()); err != nil {
		return fmt.Errorf("transport socket %s: %w", ts.Name, err)
	}
	return nil
}

func validateAny(a *anypb.Any) error {
	if a == nil {
		return fmt.Errorf("missing typed_config")
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return err
	}
	v, ok := m.(validator)
	if !ok {
		return fmt.Errorf("%T has no validation", m)
	}
	return v.ValidateAll()
}
