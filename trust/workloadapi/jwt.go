package workloadapi

import (
	"context"
	"encoding/json"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// JWTSVID is one JWT-SVID for a caller.
type JWTSVID struct {
	ID    spiffeid.ID
	Token string
}

// JWTSource is the JWT half of what a Source provides.
type JWTSource interface {
	// JWTSVIDs returns JWT-SVIDs of the caller's identities (only id when
	// it is set) for audience. entitled is false when no registration
	// matches the caller.
	JWTSVIDs(ctx context.Context, c Caller, audience []string, id string) (svids []JWTSVID, entitled bool, err error)
	// JWTBundles returns the JWT authorities of the local and federated
	// trust domains, each separate.
	JWTBundles() []*jwtbundle.Bundle
}

// FetchJWTSVID returns JWT-SVIDs for the requested audience.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	c, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.SpiffeId != "" {
		if _, err := spiffeid.FromString(req.SpiffeId); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "spiffe_id: %v", err)
		}
	}
	svids, entitled, err := s.cfg.Source.JWTSVIDs(ctx, c, req.Audience, req.SpiffeId)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "could not obtain a JWT-SVID: %v", err)
	}
	if !entitled || len(svids) == 0 {
		return nil, errNotEntitled
	}
	resp := &workload.JWTSVIDResponse{}
	for _, sv := range svids {
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: sv.ID.String(), Svid: sv.Token})
	}
	return resp, nil
}

func (s *Server) jwtBundlesMap() (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, b := range s.cfg.Source.JWTBundles() {
		doc, err := b.Marshal()
		if err != nil {
			return nil, err
		}
		out[b.TrustDomain().IDString()] = doc
	}
	return out, nil
}

// FetchJWTBundles streams the JWT bundles, again on every change.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	c, err := caller(stream.Context())
	if err != nil {
		return err
	}
	src := s.cfg.Source
	for {
		changed := src.Changed()
		if _, entitled := src.Identities(c); !entitled {
			return errNotEntitled
		}
		m, err := s.jwtBundlesMap()
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if err := stream.Send(&workload.JWTBundlesResponse{Bundles: m}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// ValidateJWTSVID checks a JWT-SVID against the bundles and an audience.
// Any local process may validate.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if _, err := caller(ctx); err != nil {
		return nil, err
	}
	if req.Audience == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.Svid == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	set := jwtbundle.NewSet(s.cfg.Source.JWTBundles()...)
	sv, err := jwtsvid.ParseAndValidate(req.Svid, set, []string{req.Audience})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID: %v", err)
	}
	claims, err := claimsStruct(sv.Claims)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: sv.ID.String(), Claims: claims}, nil
}

// claimsStruct converts JWT claims (whose numbers may be json.Number or
// other Go types) to a protobuf Struct through JSON.
func claimsStruct(c map[string]any) (*structpb.Struct, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return structpb.NewStruct(m)
}
