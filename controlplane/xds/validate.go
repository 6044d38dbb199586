package xds

import (
	"fmt"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
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
