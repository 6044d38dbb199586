package api

import (
	"context"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust/bundleendpoint"
)

// bundleService serves the Bundle API (the site's own bundle and
// foreign ones).
type bundleService struct {
	apipb.UnimplementedBundleServer
	*Server
	node Bundles
}

func (s bundleService) GetBundle(ctx context.Context, req *apipb.GetBundleRequest) (*apipb.GetBundleResponse, error) {
	td := s.cfg.TrustDomain()
	b, err := s.node.OwnBundle()
	if err != nil {
		return nil, err
	}
	doc, err := b.Marshal()
	if err != nil {
		return nil, err
	}
	seq, _ := b.SequenceNumber()
	return &apipb.GetBundleResponse{TrustDomain: td.Name(), Bundle: doc, Sequence: seq}, nil
}

// ForeignStatus describes a stored foreign bundle.
func ForeignStatus(f *statepb.ForeignBundle) *apipb.ForeignBundleStatus {
	st := &apipb.ForeignBundleStatus{
		TrustDomain: f.TrustDomain, EndpointUrl: f.EndpointUrl, Profile: "https_web",
		Sequence: f.Sequence, LastSuccess: f.LastSuccess, LastAttempt: f.LastAttempt, LastError: f.LastError,
	}
	if f.EndpointSpiffeId != "" {
		st.Profile = "https_spiffe"
	}
	if f.RefreshHintSeconds > 0 {
		st.RefreshHint = durationpb.New(secondsDuration(f.RefreshHintSeconds))
	}
	if td, err := spiffeid.TrustDomainFromString(f.TrustDomain); err == nil {
		if b, err := bundleendpoint.Parse(td, f.Bundle); err == nil {
			st.X509Authorities, st.JwtAuthorities = uint32(len(b.X509Authorities())), uint32(len(b.JWTAuthorities()))
		}
	}
	return st
}

// SetForeign creates or replaces the relationship with another trust domain.
func (s bundleService) SetForeign(ctx context.Context, req *apipb.SetForeignRequest) (*apipb.SetForeignResponse, error) {
	td, err := spiffeid.TrustDomainFromString(req.TrustDomain)
	if err != nil {
		return nil, fieldErr("trust_domain", "%v", err)
	}
	if td == s.cfg.TrustDomain() {
		return nil, fieldErr("trust_domain", "%s is this site's own trust domain", td)
	}
	if err := s.notAPeer(td.Name()); err != nil {
		return nil, err
	}
	if u, err := url.Parse(req.EndpointUrl); err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fieldErr("endpoint_url", "%q is not an https URL", req.EndpointUrl)
	}
	if req.EndpointSpiffeId != "" {
		id, err := spiffeid.FromString(req.EndpointSpiffeId)
		if err != nil || id.TrustDomain() != td {
			return nil, fieldErr("endpoint_spiffe_id", "%q is not a SPIFFE ID in %s", req.EndpointSpiffeId, td)
		}
		if len(req.Bundle) == 0 {
			return nil, fieldErr("bundle", "the https_spiffe profile needs %s's bundle to authenticate its endpoint (get it with `strait bundle show` there)", td)
		}
	}
	var seq uint64
	if len(req.Bundle) > 0 {
		b, err := bundleendpoint.Parse(td, req.Bundle)
		if err != nil {
			return nil, fieldErr("bundle", "%v", err)
		}
		seq, _ = b.SequenceNumber()
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.SetForeignResponse, error) {
		return apipb.NewBundleClient(c).SetForeign(ctx, req)
	}); ok {
		return r, err
	}
	rec := &statepb.ForeignBundle{TrustDomain: td.Name(), EndpointUrl: req.EndpointUrl, EndpointSpiffeId: req.EndpointSpiffeId, Bundle: req.Bundle, Sequence: seq}
	if len(rec.Bundle) == 0 { // https_web without a bundle: fetch it now
		b, err := s.cfg.Peering.FetchForeign(ctx, rec)
		if err != nil {
			return nil, fieldErr("endpoint_url", "could not fetch the bundle: %v", err)
		}
		if rec.Bundle, err = b.Marshal(); err != nil {
			return nil, err
		}
		rec.Sequence, _ = b.SequenceNumber()
		rec.LastSuccess = timestamppb.New(s.cfg.Now())
	}
	cmd := &statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: rec}}
	if _, _, err := s.apply(ctx, cmd); err != nil {
		return nil, err
	}
	return &apipb.SetForeignResponse{Status: ForeignStatus(rec)}, nil
}

func (s bundleService) ListForeign(ctx context.Context, req *apipb.ListForeignRequest) (*apipb.ListForeignResponse, error) {
	resp := &apipb.ListForeignResponse{}
	for _, f := range s.store().ForeignBundles() {
		resp.Bundles = append(resp.Bundles, ForeignStatus(f))
	}
	return resp, nil
}

// notAPeer refuses to touch a peer's trust domain as a plain foreign
// bundle: replacing or removing it would dismantle the peering on this
// side only (its imports orphaned, the peer never told).
func (s bundleService) notAPeer(td string) error {
	if f, ok := s.store().ForeignBundle(td); ok && f.PeerName != "" {
		return conflict("%s is the trust domain of peer %q, kept by the peering; to end it on both sides run `strait federation delete %s`", td, f.PeerName, f.PeerName)
	}
	return nil
}

func (s bundleService) RemoveForeign(ctx context.Context, req *apipb.RemoveForeignRequest) (*apipb.RemoveForeignResponse, error) {
	if _, err := spiffeid.TrustDomainFromString(req.TrustDomain); err != nil {
		return nil, fieldErr("trust_domain", "%v", err)
	}
	if err := s.notAPeer(req.TrustDomain); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.RemoveForeignResponse, error) {
		return apipb.NewBundleClient(c).RemoveForeign(ctx, req)
	}); ok {
		return r, err
	}
	// Checked again on the leader, just before the write.
	if err := s.notAPeer(req.TrustDomain); err != nil {
		return nil, err
	}
	cmd := &statepb.Command{Cmd: &statepb.Command_DeleteForeignBundle{DeleteForeignBundle: &statepb.DeleteForeignBundle{TrustDomain: req.TrustDomain}}}
	if _, _, err := s.apply(ctx, cmd); err != nil {
		return nil, err
	}
	return &apipb.RemoveForeignResponse{}, nil
}
