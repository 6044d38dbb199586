package api

import (
	"context"
	"slices"
	"strconv"

	"google.golang.org/grpc"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
)

// MaxExportPeers bounds an export's peer list.
const MaxExportPeers = 64

// validPeers checks a peer list; with known set, that every peer exists
// (checked on the leader, which has every committed peering).
func (s federationService) validPeers(field string, peers []string, known bool) error {
	if len(peers) > MaxExportPeers {
		return fieldErr(field, "at most %d peers", MaxExportPeers)
	}
	names := map[string]bool{}
	for _, f := range s.store().ForeignBundles() {
		if f.PeerName != "" {
			names[f.PeerName] = true
		}
	}
	for i, p := range peers {
		if p == "*" {
			continue
		}
		if err := validLabel(field+"["+strconv.Itoa(i)+"]", p); err != nil {
			return err
		}
		if known && !names[p] {
			return fieldErr(field+"["+strconv.Itoa(i)+"]", "no peer named %q (see `strait federation list`)", p)
		}
	}
	return nil
}

// Export adds peers to a service's export.
func (s federationService) Export(ctx context.Context, req *apipb.ExportRequest) (*apipb.ExportResponse, error) {
	e := req.GetExport()
	if e == nil {
		return nil, fieldErr("export", "is required")
	}
	if err := validateServiceRef(&e.Namespace, e.Service); err != nil {
		return nil, err
	}
	if len(e.To) == 0 {
		return nil, fieldErr("export.to", "name at least one peer, or \"*\" for all")
	}
	if err := s.validPeers("export.to", e.To, false); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.ExportResponse, error) {
		return apipb.NewFederationClient(c).Export(ctx, req)
	}); ok {
		return r, err
	}
	if err := s.validPeers("export.to", e.To, true); err != nil {
		return nil, err
	}
	s.exportMu.Lock()
	defer s.exportMu.Unlock()
	to := slices.Clone(e.To)
	for _, cur := range s.store().Exports() {
		if cur.Namespace == e.Namespace && cur.Service == e.Service {
			to = append(to, cur.To...)
		}
	}
	slices.Sort(to)
	to = slices.Compact(to)
	out := &apipb.Export{Namespace: e.Namespace, Service: e.Service, To: to}
	if _, _, err := s.apply(ctx, state.SetExportCommand(out)); err != nil {
		return nil, err
	}
	return &apipb.ExportResponse{Export: out}, nil
}

// Unexport removes peers (or all) from a service's export.
func (s federationService) Unexport(ctx context.Context, req *apipb.UnexportRequest) (*apipb.UnexportResponse, error) {
	if err := validateServiceRef(&req.Namespace, req.Service); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.UnexportResponse, error) {
		return apipb.NewFederationClient(c).Unexport(ctx, req)
	}); ok {
		return r, err
	}
	s.exportMu.Lock()
	defer s.exportMu.Unlock()
	var cur *apipb.Export
	for _, e := range s.store().Exports() {
		if e.Namespace == req.Namespace && e.Service == req.Service {
			cur = e
		}
	}
	if cur == nil {
		return nil, notFound("export of %s/%s", req.Namespace, req.Service)
	}
	var to []string
	if len(req.From) > 0 {
		for _, p := range cur.To {
			if !slices.Contains(req.From, p) {
				to = append(to, p)
			}
		}
	}
	out := &apipb.Export{Namespace: req.Namespace, Service: req.Service, To: to}
	if _, _, err := s.apply(ctx, state.SetExportCommand(out)); err != nil {
		return nil, err
	}
	return &apipb.UnexportResponse{}, nil
}

func (s federationService) ListExports(ctx context.Context, req *apipb.ListExportsRequest) (*apipb.ListExportsResponse, error) {
	return &apipb.ListExportsResponse{Exports: s.store().Exports()}, nil
}
