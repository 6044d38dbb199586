package api

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// DefaultServerTokenTTL is the lifetime of a server join token when none is given.
const DefaultServerTokenTTL = time.Hour

// Agent and gateway tokens admit one node and expire after a day unless
// created with other bounds: a leaked token is worth little, and a fleet
// (a launch template, an autoscaling group) asks for what it needs with
// --max-uses and --ttl, as it must think about how many and how long
// anyway.
const (
	DefaultJoinTokenTTL  = 24 * time.Hour
	DefaultJoinTokenUses = 1
)

// MaxServerTokenUses bounds a server token's uses. Single-use unless asked:
// a group of servers started from one template (cloud auto-join) shares
// one token, which stays short-lived.
const MaxServerTokenUses = 7

// aclService serves the ACL API (tokens).
type aclService struct {
	apipb.UnimplementedACLServer
	*Server
}

func notFound(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, state.ErrNotFound)...)
}

func (s aclService) CreateToken(ctx context.Context, req *apipb.CreateTokenRequest) (*apipb.CreateTokenResponse, error) {
	if _, ok := apipb.TokenKind_name[int32(req.Kind)]; !ok || req.Kind == apipb.TokenKind_TOKEN_KIND_UNSPECIFIED {
		return nil, fieldErr("kind", "must be management, write, read, server, agent or gateway")
	}
	if len(req.Description) > MaxDescription {
		return nil, fieldErr("description", "is %d bytes; at most %d are allowed", len(req.Description), MaxDescription)
	}
	var ttl time.Duration
	if req.Ttl != nil {
		if err := req.Ttl.CheckValid(); err != nil {
			return nil, fieldErr("ttl", "%v", err)
		}
		ttl = req.Ttl.AsDuration()
		if ttl < 0 {
			return nil, fieldErr("ttl", "must not be negative")
		}
	}
	if req.Kind == apipb.TokenKind_TOKEN_KIND_SERVER {
		if ttl == 0 {
			ttl = DefaultServerTokenTTL
		}
		if req.MaxUses > MaxServerTokenUses {
			return nil, fieldErr("max_uses", "a server token admits at most %d servers (a whole site and spares)", MaxServerTokenUses)
		}
		if req.MaxUses == 0 {
			req.MaxUses = 1
		}
	}
	if req.Kind == apipb.TokenKind_TOKEN_KIND_AGENT || req.Kind == apipb.TokenKind_TOKEN_KIND_GATEWAY {
		if ttl == 0 {
			ttl = DefaultJoinTokenTTL
		}
		if req.MaxUses == 0 {
			req.MaxUses = DefaultJoinTokenUses
		}
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.CreateTokenResponse, error) {
		return apipb.NewACLClient(c).CreateToken(ctx, req)
	}); ok {
		return r, err
	}
	secret, err := NewSecret()
	if err != nil {
		return nil, err
	}
	acc, err := NewAccessorID()
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	tok := &apipb.Token{AccessorId: acc, Kind: req.Kind, Description: req.Description, CreateTime: timestamppb.New(now), MaxUses: req.MaxUses}
	if ttl > 0 {
		tok.ExpireTime = timestamppb.New(now.Add(ttl))
	}
	h := state.HashSecret(secret)
	cmd := state.CreateTokenCommand(tok, h[:], "")
	if _, _, err := s.apply(ctx, cmd); err != nil {
		return nil, err
	}
	if req.Kind == apipb.TokenKind_TOKEN_KIND_SERVER || req.Kind == apipb.TokenKind_TOKEN_KIND_AGENT || req.Kind == apipb.TokenKind_TOKEN_KIND_GATEWAY {
		secret += "." + s.cfg.Authority.TokenPin()
	}
	return &apipb.CreateTokenResponse{Token: tok, Secret: secret}, nil
}

func (s aclService) ListTokens(ctx context.Context, req *apipb.ListTokensRequest) (*apipb.ListTokensResponse, error) {
	return &apipb.ListTokensResponse{Tokens: s.store().Tokens()}, nil
}

func (s aclService) RevokeToken(ctx context.Context, req *apipb.RevokeTokenRequest) (*apipb.RevokeTokenResponse, error) {
	if len(req.AccessorId) != 32 {
		return nil, fieldErr("accessor_id", "must be the 32-character accessor ID shown by strait token list")
	}
	if r, ok, err := forward(ctx, s.Server, func(ctx context.Context, c *grpc.ClientConn) (*apipb.RevokeTokenResponse, error) {
		return apipb.NewACLClient(c).RevokeToken(ctx, req)
	}); ok {
		return r, err
	}
	cmd := &statepb.Command{Cmd: &statepb.Command_RevokeToken{RevokeToken: &statepb.RevokeToken{AccessorId: req.AccessorId}}}
	if _, _, err := s.apply(ctx, cmd); err != nil {
		return nil, err
	}
	return &apipb.RevokeTokenResponse{}, nil
}
