package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/mux"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/enroll"
	"github.com/straitmesh/strait/trust/mtls"
)

// Tokens travel as "authorization: Bearer <secret>". Secrets are
// "strait_" followed by 256 random bits; server join tokens add ".<pin>",
// the SHA-256 of the site CA's public key, which the joiner uses to trust
// the site before it has the bundle.
const (
	authHeader   = "authorization"
	secretPrefix = "strait_"
)

// permission is what a method needs.
type permission int

const (
	permDeny             permission = iota // default: no such method, or not callable
	permRead                               // read, write or management tokens
	permWrite                              // write or management tokens
	permManage                             // management tokens
	permServerJoin                         // a server token (consumed by the handler)
	permServerPeer                         // the caller's SVID names a server of this site
	permAgentJoin                          // an agent token (consumed by the handler)
	permAgentPeer                          // the caller's SVID names an agent of this site
	permFederationAccept                   // a federation invite's secret (consumed by the handler)
	permPeerServer                         // the caller's SVID names a server of a peer site
	permGatewayJoin                        // a gateway token (consumed by the handler)
	permGatewayPeer                        // the caller's SVID names a gateway of this site
	permMeshPeer                           // a gateway's or a workload's SVID of this site (xDS)
)

var methodPerms = map[string]permission{
	apipb.Catalog_Register_FullMethodName:        permWrite,
	apipb.Catalog_Deregister_FullMethodName:      permWrite,
	apipb.Catalog_Heartbeat_FullMethodName:       permWrite,
	apipb.Catalog_ListServices_FullMethodName:    permRead,
	apipb.Catalog_GetService_FullMethodName:      permRead,
	apipb.Catalog_Watch_FullMethodName:           permRead,
	apipb.ACL_CreateToken_FullMethodName:         permManage,
	apipb.ACL_ListTokens_FullMethodName:          permManage,
	apipb.ACL_RevokeToken_FullMethodName:         permManage,
	apipb.Operator_Status_FullMethodName:         permRead,
	apipb.Operator_SiteStatus_FullMethodName:     permRead,
	apipb.Operator_ListPeers_FullMethodName:      permRead,
	apipb.Operator_RemovePeer_FullMethodName:     permManage,
	apipb.Operator_RotateCA_FullMethodName:       permManage,
	apipb.Operator_CAStatus_FullMethodName:       permRead,
	apipb.Cluster_Join_FullMethodName:            permServerJoin,
	apipb.Cluster_Promote_FullMethodName:         permServerPeer,
	apipb.Cluster_Leave_FullMethodName:           permServerPeer,
	apipb.Cluster_ServerStatus_FullMethodName:    permServerPeer,
	apipb.Workload_CreateEntry_FullMethodName:    permManage,
	apipb.Workload_ListAgents_FullMethodName:     permRead,
	apipb.Workload_RevokeAgent_FullMethodName:    permManage,
	apipb.Workload_ListEntries_FullMethodName:    permRead,
	apipb.Workload_DeleteEntry_FullMethodName:    permManage,
	apipb.Federation_CreateInvite_FullMethodName: permManage,
	apipb.Federation_Export_FullMethodName:       permManage,
	apipb.Federation_Unexport_FullMethodName:     permManage,
	apipb.Federation_ListExports_FullMethodName:  permRead,
	apipb.Federation_Join_FullMethodName:         permManage,
	apipb.Federation_Accept_FullMethodName:       permFederationAccept,
	apipb.Federation_List_FullMethodName:         permRead,
	apipb.Federation_Remove_FullMethodName:       permManage,
	apipb.Federation_Unpeer_FullMethodName:       permPeerServer,
	apipb.Federation_Replicate_FullMethodName:    permPeerServer,
	apipb.Bundle_GetBundle_FullMethodName:        permRead,
	apipb.Bundle_SetForeign_FullMethodName:       permManage,
	apipb.Bundle_ListForeign_FullMethodName:      permRead,
	apipb.Bundle_RemoveForeign_FullMethodName:    permManage,
	apipb.Identity_AgentJoin_FullMethodName:      permAgentJoin,
	apipb.Identity_RenewAgent_FullMethodName:     permAgentPeer,
	apipb.Identity_WatchAgent_FullMethodName:     permAgentPeer,
	apipb.Identity_SignX509SVIDs_FullMethodName:  permAgentPeer,
	apipb.Identity_SignJWTSVID_FullMethodName:    permAgentPeer,
	apipb.Intentions_Set_FullMethodName:          permManage,
	apipb.Intentions_Delete_FullMethodName:       permManage,
	apipb.Intentions_List_FullMethodName:         permRead,
	apipb.Intentions_Check_FullMethodName:        permRead,
	apipb.Intentions_CheckPeer_FullMethodName:    permRead,
	apipb.Gateway_Join_FullMethodName:            permGatewayJoin,
	apipb.Gateway_Renew_FullMethodName:           permGatewayPeer,
	apipb.Gateway_Heartbeat_FullMethodName:       permGatewayPeer,
	apipb.Gateway_List_FullMethodName:            permRead,
	apipb.Gateway_Revoke_FullMethodName:          permManage,

	// A peer's server asking this site's decision (strait ping there).
	apipb.Intentions_CheckFromPeer_FullMethodName: permPeerServer,
	// xDS: the site's gateways.
	discovery.AggregatedDiscoveryService_StreamAggregatedResources_FullMethodName: permMeshPeer,
}

// viaGatewayMethods are all a connection that a gateway passed through
// from the WAN may call: peers' servers federating, and asking how this
// site's intentions decide a call from theirs (strait ping). Everything
// else (management, joins, reads) is for the site's own network.
var viaGatewayMethods = map[string]bool{
	apipb.Federation_Accept_FullMethodName:        true,
	apipb.Federation_Replicate_FullMethodName:     true,
	apipb.Federation_Unpeer_FullMethodName:        true,
	apipb.Intentions_CheckFromPeer_FullMethodName: true,
}

// viaGateway says whether the call arrived through a gateway's
// passthrough (SNI servers.<td>) from outside the site.
func viaGateway(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	ai, ok := p.AuthInfo.(mux.AuthInfo)
	return ok && ai.ViaGateway
}

// GatewayCaller returns the name of the gateway that made an authenticated
// call (the xDS server holds subscribers to it).
func GatewayCaller(ctx context.Context) (string, bool) {
	name, ok := ctx.Value(gatewayNameKey).(string)
	return name, ok
}

// WorkloadCaller returns the SPIFFE ID of the workload that made the call,
// for methods open to the site's workloads (proxyless xDS).
func WorkloadCaller(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(workloadIDKey).(string)
	return id, ok
}

func allows(kind apipb.TokenKind, p permission) bool {
	switch kind {
	case apipb.TokenKind_TOKEN_KIND_MANAGEMENT:
		return p == permRead || p == permWrite || p == permManage
	case apipb.TokenKind_TOKEN_KIND_WRITE:
		return p == permRead || p == permWrite
	case apipb.TokenKind_TOKEN_KIND_READ:
		return p == permRead
	}
	return false
}

type ctxKey int

const (
	secretKey ctxKey = iota
	serverNodeKey
	agentNodeKey
	peerTDKey
	gatewayNameKey
	workloadIDKey
)

// peerTDHeader carries a peer's trust domain when one of this site's
// servers forwards a peer's call to the leader; it is believed only from
// this site's own servers.
const peerTDHeader = "strait-peer-trust-domain"

// bearer returns the secret part of the call's token.
func bearer(ctx context.Context) (string, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(authHeader) {
		if s, ok := strings.CutPrefix(v, "Bearer "); ok {
			s, _, _ = strings.Cut(strings.TrimSpace(s), ".")
			return s, s != ""
		}
	}
	return "", false
}

// authenticate checks the caller may call method and returns a context
// carrying what handlers need (the secret for join, the server node name).
func (s *Server) authenticate(ctx context.Context, method string) (context.Context, error) {
	perm := methodPerms[method]
	if perm != permDeny && !viaGatewayMethods[method] && viaGateway(ctx) {
		return nil, status.Errorf(codes.PermissionDenied,
			"%s is not callable through a gateway: from outside the site only federation (Accept, Replicate, Unpeer, CheckFromPeer) is; manage the site, and join servers, agents and gateways to it, from the site's own network (a server's address, not a gateway's)", method)
	}
	switch perm {
	case permDeny:
		return nil, status.Errorf(codes.PermissionDenied, "%s is not callable", method)
	case permServerPeer:
		node, ok := s.peerServer(ctx)
		if !ok {
			return nil, status.Error(codes.PermissionDenied, "only servers of this site, presenting their SVID, may call this")
		}
		return context.WithValue(ctx, serverNodeKey, node), nil
	case permPeerServer:
		td, ok := s.peerSite(ctx)
		if !ok {
			return nil, status.Error(codes.PermissionDenied, "only servers of a peer site, presenting their SVID, may call this")
		}
		return context.WithValue(ctx, peerTDKey, td), nil
	case permAgentPeer:
		id, ok := s.peerID(ctx)
		node, isAgent := trust.AgentNode(id, s.cfg.TrustDomain())
		if !ok || !isAgent {
			return nil, status.Error(codes.PermissionDenied, "only agents of this site, presenting their SVID, may call this")
		}
		a, known := s.store().Agent(node)
		if !known {
			return nil, status.Errorf(codes.PermissionDenied, "agent %q is unknown to this site", node)
		}
		if a.Revoked {
			return nil, enroll.RevokedStatus("agent", node)
		}
		return context.WithValue(ctx, agentNodeKey, node), nil
	case permMeshPeer:
		if id, ok := s.peerID(ctx); ok {
			if _, _, isWorkload := trust.WorkloadService(id, s.cfg.TrustDomain()); isWorkload {
				return context.WithValue(ctx, workloadIDKey, id.String()), nil
			}
		}
		return s.gatewayPeer(ctx, "only gateways and workloads of this site, presenting their SVIDs, may call this")
	case permGatewayPeer:
		return s.gatewayPeer(ctx, "only gateways of this site, presenting their SVIDs, may call this")
	}
	secret, ok := bearer(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no token: set STRAIT_TOKEN or pass --token")
	}
	if perm == permServerJoin || perm == permAgentJoin || perm == permFederationAccept || perm == permGatewayJoin {
		return context.WithValue(ctx, secretKey, secret), nil
	}
	rec, ok := s.store().TokenBySecret(state.HashSecret(secret))
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "token is unknown or revoked")
	}
	if err := state.Usable(rec.Token, s.cfg.Now()); err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "token %s", err)
	}
	if !allows(rec.Token.Kind, perm) {
		return nil, status.Errorf(codes.PermissionDenied, "a %s token may not call %s", kindName(rec.Token.Kind), method)
	}
	return ctx, nil
}

// consumeToken uses the call's bearer token once, through Raft. It must
// be of kind (else PermissionDenied with invalid), unexpired and not used
// up. check, when set, runs before the token is consumed, so a request
// refused for another reason does not burn it.
func (s *Server) consumeToken(ctx context.Context, kind apipb.TokenKind, invalid string, check func() error) (*state.TokenRecord, error) {
	secret, _ := ctx.Value(secretKey).(string)
	h := state.HashSecret(secret)
	rec, ok := s.store().TokenBySecret(h)
	if !ok || rec.Token.Kind != kind {
		return nil, status.Error(codes.PermissionDenied, invalid)
	}
	if err := state.Usable(rec.Token, s.cfg.Now()); err != nil {
		return nil, status.Errorf(codes.PermissionDenied, "token %v: ask for a new one", err)
	}
	if check != nil {
		if err := check(); err != nil {
			return nil, err
		}
	}
	cmd := &statepb.Command{Cmd: &statepb.Command_ConsumeToken{ConsumeToken: &statepb.ConsumeToken{SecretHash: h[:]}}}
	if _, _, err := s.apply(ctx, cmd); err != nil {
		return nil, err
	}
	return rec, nil
}

// gatewayPeer admits a caller presenting the SVID of a gateway of this
// site that is not revoked.
func (s *Server) gatewayPeer(ctx context.Context, denied string) (context.Context, error) {
	id, ok := s.peerID(ctx)
	name, isGateway := trust.GatewayName(id, s.cfg.TrustDomain())
	if !ok || !isGateway {
		return nil, status.Error(codes.PermissionDenied, denied)
	}
	g, known := s.store().Gateway(name)
	if !known {
		return nil, status.Errorf(codes.PermissionDenied, "gateway %q is unknown to this site", name)
	}
	if g.Revoked {
		return nil, enroll.RevokedStatus("gateway", name)
	}
	return context.WithValue(ctx, gatewayNameKey, name), nil
}

// peerServer returns the node name of a caller presenting a server SVID.
func (s *Server) peerServer(ctx context.Context) (string, bool) {
	id, ok := s.peerID(ctx)
	if !ok {
		return "", false
	}
	return trust.ServerNode(id, s.cfg.TrustDomain())
}

// peerSite returns the trust domain of a calling peer site's server: a
// direct caller presenting a peer server's SVID, or one of this site's
// servers forwarding for one.
func (s *Server) peerSite(ctx context.Context) (string, bool) {
	id, ok := s.peerID(ctx)
	if !ok {
		return "", false
	}
	td := id.TrustDomain()
	if td == s.cfg.TrustDomain() {
		if !trust.IsServer(id, td) {
			return "", false
		}
		md, _ := metadata.FromIncomingContext(ctx)
		v := md.Get(peerTDHeader)
		if len(v) != 1 {
			return "", false
		}
		return v[0], true
	}
	if !trust.IsServer(id, td) {
		return "", false
	}
	f, ok := s.store().ForeignBundle(td.Name())
	return td.Name(), ok && f.PeerName != ""
}

// forwardedForHeader carries the SPIFFE ID of the original caller (an
// agent, a gateway, a peer's server) when one of this site's servers
// forwards its call to the leader; it is believed only from this site's
// own servers, whose SVIDs the leader verified.
const forwardedForHeader = "strait-forwarded-for"

// peerID is the SPIFFE ID of a caller that presented a (verified) SVID,
// or the original caller's when one of this site's servers forwarded
// the call.
func (s *Server) peerID(ctx context.Context) (spiffeid.ID, bool) {
	id, ok := s.directPeerID(ctx)
	if !ok || !trust.IsServer(id, s.cfg.TrustDomain()) {
		return id, ok
	}
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(forwardedForHeader)
	if len(v) != 1 {
		return id, ok
	}
	orig, err := spiffeid.FromString(v[0])
	if err != nil {
		return spiffeid.ID{}, false
	}
	return orig, true
}

// directPeerID is the SPIFFE ID in the caller's own client certificate.
func (s *Server) directPeerID(ctx context.Context) (spiffeid.ID, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	switch ai := p.AuthInfo.(type) {
	case mux.AuthInfo:
		return mtls.PeerID(ai.State)
	case credentials.TLSInfo:
		return mtls.PeerID(ai.State)
	}
	return spiffeid.ID{}, false
}

func kindName(k apipb.TokenKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "TOKEN_KIND_"))
}

// NewSecret returns a fresh token secret ("strait_" and 256 random bits).
func NewSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return secretPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// NewAccessorID returns a fresh public token ID.
func NewAccessorID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// NewManagementToken creates the bootstrap management token: its secret and
// the record to store.
func NewManagementToken(now time.Time) (secret string, tok *apipb.Token, err error) {
	secret, err = NewSecret()
	if err != nil {
		return "", nil, err
	}
	acc, err := NewAccessorID()
	if err != nil {
		return "", nil, err
	}
	return secret, &apipb.Token{AccessorId: acc, Kind: apipb.TokenKind_TOKEN_KIND_MANAGEMENT, Description: "initial management token", CreateTime: timestamppb.New(now)}, nil
}
