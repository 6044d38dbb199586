package api

import (
	"context"
	"crypto/x509"
	"fmt"
	"path"
	"sort"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/meshname"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/enroll"
)

// Limits on workload entries and signing requests.
const (
	MaxSelectors     = 8
	MinSVIDTTL       = time.Minute
	MaxSVIDTTL       = 72 * time.Hour
	MaxSignBatch     = 1000
	AgentSVIDTTL     = 24 * time.Hour
	maxSelectorValue = 4096
)

func validateEntry(e *apipb.WorkloadEntry) error {
	if e == nil {
		return fieldErr("entry", "is required")
	}
	if e.Id != "" || e.CreateIndex != 0 {
		return fieldErr("entry.id", "is set by the server; leave it empty")
	}
	if err := validateServiceRef(&e.Namespace, e.Service); err != nil {
		return err
	}
	if e.Agent != "*" {
		if err := validLabel("entry.agent", e.Agent); err != nil {
			return fieldErr("entry.agent", "%s (or \"*\" for every agent)", err.(*FieldError).Rule)
		}
	}
	if len(e.Selectors) == 0 || len(e.Selectors) > MaxSelectors {
		return fieldErr("entry.selectors", "need 1 to %d selectors, got %d", MaxSelectors, len(e.Selectors))
	}
	for i, sel := range e.Selectors {
		f := "entry.selectors[" + strconv.Itoa(i) + "]"
		if sel.Type != "unix" {
			return fieldErr(f+".type", "%q is not a selector type (want unix)", sel.Type)
		}
		switch sel.Key {
		case "uid", "gid":
			if n, err := strconv.ParseUint(sel.Value, 10, 32); err != nil || n > 1<<31 {
				return fieldErr(f+".value", "unix:%s wants a numeric id, got %q", sel.Key, sel.Value)
			}
		case "path":
			if !path.IsAbs(sel.Value) || path.Clean(sel.Value) != sel.Value || len(sel.Value) > maxSelectorValue {
				return fieldErr(f+".value", "unix:path wants a clean absolute path, got %q", sel.Value)
			}
		default:
			return fieldErr(f+".key", "unix:%s is not a selector (want uid, gid or path)", sel.Key)
		}
	}
	if e.SvidTtl != nil {
		if err := e.SvidTtl.CheckValid(); err != nil {
			return fieldErr("entry.svid_ttl", "%v", err)
		}
		if d := e.SvidTtl.AsDuration(); d < MinSVIDTTL || d > MaxSVIDTTL {
			return fieldErr("entry.svid_ttl", "%s is outside %s to %s", d, MinSVIDTTL, MaxSVIDTTL)
		}
	}
	return nil
}

func (s *Server) CreateEntry(ctx context.Context, req *apipb.CreateEntryRequest) (*apipb.CreateEntryResponse, error) {
	if err := validateEntry(req.Entry); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s, func(ctx context.Context, c *grpc.ClientConn) (*apipb.CreateEntryResponse, error) {
		return apipb.NewWorkloadClient(c).CreateEntry(ctx, req)
	}); ok {
		return r, err
	}
	id, err := NewAccessorID()
	if err != nil {
		return nil, err
	}
	req.Entry.Id = id
	_, idx, err := s.apply(ctx, state.CreateEntryCommand(req.Entry))
	if err != nil {
		return nil, err
	}
	req.Entry.CreateIndex = idx
	return &apipb.CreateEntryResponse{Entry: req.Entry}, nil
}

func (s *Server) ListEntries(ctx context.Context, req *apipb.ListEntriesRequest) (*apipb.ListEntriesResponse, error) {
	return &apipb.ListEntriesResponse{Entries: s.cfg.Store.Entries("")}, nil
}

func (s *Server) DeleteEntry(ctx context.Context, req *apipb.DeleteEntryRequest) (*apipb.DeleteEntryResponse, error) {
	if len(req.Id) != 32 {
		return nil, fieldErr("id", "must be the 32-character entry ID shown by strait workload list")
	}
	if r, ok, err := forward(ctx, s, func(ctx context.Context, c *grpc.ClientConn) (*apipb.DeleteEntryResponse, error) {
		return apipb.NewWorkloadClient(c).DeleteEntry(ctx, req)
	}); ok {
		return r, err
	}
	cmd := &statepb.Command{Cmd: &statepb.Command_DeleteEntry{DeleteEntry: &statepb.DeleteEntry{Id: req.Id}}}
	if _, _, err := s.apply(ctx, cmd); err != nil {
		return nil, err
	}
	return &apipb.DeleteEntryResponse{}, nil
}

func ders(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

// AgentJoin consumes an agent token and issues the agent's own SVID.
func (s *Server) AgentJoin(ctx context.Context, req *apipb.AgentJoinRequest) (*apipb.AgentJoinResponse, error) {
	if err := meshname.ValidLabel(req.Node); err != nil {
		return nil, fieldErr("node", "%v", err)
	}
	if _, err := ca.ParseCSR(req.Csr); err != nil {
		return nil, fieldErr("csr", "%v", err)
	}
	if r, ok, err := forward(ctx, s, func(ctx context.Context, c *grpc.ClientConn) (*apipb.AgentJoinResponse, error) {
		return apipb.NewIdentityClient(c).AgentJoin(ctx, req)
	}); ok {
		return r, err
	}
	rec, err := s.consumeToken(ctx, apipb.TokenKind_TOKEN_KIND_AGENT, "not a valid agent token: create one with `strait token create --kind agent`",
		func() error {
			if a, ok := s.cfg.Store.Agent(req.Node); ok && !a.Revoked {
				return status.Errorf(codes.AlreadyExists, "agent %q has already joined; if it lost its identity, run `strait agent revoke %s` first", req.Node, req.Node)
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	// Sign first: an agent is recorded only with an SVID in hand.
	id, err := trust.AgentID(s.cfg.TrustDomain(), req.Node)
	if err != nil {
		return nil, err
	}
	cert, err := s.signSVID(ctx, id, req.Csr, AgentSVIDTTL)
	if err != nil {
		return nil, err
	}
	auth, err := s.cfg.Authority.Authorities()
	if err != nil {
		return nil, err
	}
	record := &apipb.Agent{Node: req.Node, Joined: timestamppb.New(s.cfg.Now()), TokenAccessor: rec.Token.AccessorId}
	if _, _, err := s.apply(ctx, state.SetAgentCommand(record)); err != nil {
		return nil, err
	}
	s.cfg.Logger.Info("agent joined", "agent", req.Node, "token_accessor", rec.Token.AccessorId)
	return &apipb.AgentJoinResponse{TrustDomain: s.cfg.TrustDomain().Name(), Svid: [][]byte{cert.Raw}, Bundle: ders(auth)}, nil
}

func (s *Server) ListAgents(ctx context.Context, req *apipb.ListAgentsRequest) (*apipb.ListAgentsResponse, error) {
	return &apipb.ListAgentsResponse{Agents: s.cfg.Store.Agents()}, nil
}

// RevokeAgent makes every server refuse the agent's SVID from now on.
func (s *Server) RevokeAgent(ctx context.Context, req *apipb.RevokeAgentRequest) (*apipb.RevokeAgentResponse, error) {
	if err := validLabel("node", req.Node); err != nil {
		return nil, err
	}
	if r, ok, err := forward(ctx, s, func(ctx context.Context, c *grpc.ClientConn) (*apipb.RevokeAgentResponse, error) {
		return apipb.NewWorkloadClient(c).RevokeAgent(ctx, req)
	}); ok {
		return r, err
	}
	a, ok := s.cfg.Store.Agent(req.Node)
	if !ok {
		return nil, toStatus(notFound("agent %q", req.Node))
	}
	n := proto.Clone(a).(*apipb.Agent)
	n.Revoked = true
	if _, _, err := s.apply(ctx, state.SetAgentCommand(n)); err != nil {
		return nil, err
	}
	s.cfg.Logger.Info("agent revoked", "agent", req.Node)
	return &apipb.RevokeAgentResponse{}, nil
}

// RenewAgent re-issues the calling agent's SVID. Any server can sign.
func (s *Server) RenewAgent(ctx context.Context, req *apipb.RenewAgentRequest) (*apipb.RenewAgentResponse, error) {
	node, _ := ctx.Value(agentNodeKey).(string)
	id, err := trust.AgentID(s.cfg.TrustDomain(), node)
	if err != nil {
		return nil, err
	}
	release, err := s.signShare.take(id, "agent", 1)
	if err != nil {
		return nil, err
	}
	defer release()
	cert, err := s.signSVID(ctx, id, req.Csr, AgentSVIDTTL)
	if err != nil {
		return nil, err
	}
	return &apipb.RenewAgentResponse{Svid: [][]byte{cert.Raw}}, nil
}

// WatchAgent streams the entries the calling agent may issue and the site
// bundle, in full, now and whenever they change.
func (s *Server) WatchAgent(req *apipb.WatchAgentRequest, stream grpc.ServerStreamingServer[apipb.AgentUpdate]) error {
	ctx := stream.Context()
	node, _ := ctx.Value(agentNodeKey).(string)
	st := s.cfg.Store
	for {
		changed := st.IdentityChanged()
		if a, ok := st.Agent(node); ok && a.Revoked {
			return enroll.RevokedStatus("agent", node)
		}
		auth, err := s.cfg.Authority.Authorities()
		if err != nil {
			return err
		}
		jwtAuth, err := s.jwtAuthorities()
		if err != nil {
			return err
		}
		upd := &apipb.AgentUpdate{Entries: st.Entries(node), Bundle: ders(auth), JwtAuthorities: jwtAuth, ActiveAuthority: auth[0].Raw}
		for _, f := range st.ForeignBundles() {
			upd.Federated = append(upd.Federated, &apipb.FederatedBundle{TrustDomain: f.TrustDomain, Bundle: f.Bundle})
		}
		if err := stream.Send(upd); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

func (s *Server) jwtAuthorities() ([]*apipb.JWTAuthority, error) {
	keys, err := s.cfg.Authority.JWTAuthorities()
	if err != nil {
		return nil, err
	}
	out := make([]*apipb.JWTAuthority, 0, len(keys))
	for kid, k := range keys {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return nil, err
		}
		out = append(out, &apipb.JWTAuthority{Kid: kid, PublicKey: der})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kid < out[j].Kid })
	return out, nil
}

// JWTSVIDTTL is the lifetime of JWT-SVIDs: bearer tokens, kept short.
const JWTSVIDTTL = 5 * time.Minute

// MaxAudiences bounds a JWT-SVID's audience list.
const MaxAudiences = 10

// agentEntry returns an entry the calling agent may issue, and its ID.
func (s *Server) agentEntry(ctx context.Context, entryID string) (*apipb.WorkloadEntry, spiffeid.ID, error) {
	node, _ := ctx.Value(agentNodeKey).(string)
	e, ok := s.cfg.Store.Entry(entryID)
	if !ok {
		return nil, spiffeid.ID{}, toStatus(notFound("workload entry %q", entryID))
	}
	if e.Agent != node && e.Agent != "*" {
		return nil, spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "entry %s is registered to agent %q, not %q", e.Id, e.Agent, node)
	}
	id, err := trust.WorkloadID(s.cfg.TrustDomain(), e.Namespace, e.Service)
	return e, id, err
}

// SignJWTSVID signs a JWT-SVID for an entry the calling agent may issue.
func (s *Server) SignJWTSVID(ctx context.Context, req *apipb.SignJWTRequest) (*apipb.SignJWTResponse, error) {
	if len(req.Audience) == 0 || len(req.Audience) > MaxAudiences {
		return nil, fieldErr("audience", "need 1 to %d audiences, got %d", MaxAudiences, len(req.Audience))
	}
	for i, a := range req.Audience {
		if a == "" || len(a) > 256 {
			return nil, fieldErr("audience["+strconv.Itoa(i)+"]", "must be 1 to 256 bytes")
		}
	}
	_, id, err := s.agentEntry(ctx, req.EntryId)
	if err != nil {
		return nil, err
	}
	tok, err := s.cfg.Authority.SignJWT(ctx, id, req.Audience, JWTSVIDTTL)
	if err != nil {
		return nil, err
	}
	return &apipb.SignJWTResponse{Token: tok}, nil
}

// SignX509SVIDs signs workload SVIDs for entries the calling agent may issue.
func (s *Server) SignX509SVIDs(ctx context.Context, req *apipb.SignRequest) (*apipb.SignResponse, error) {
	if len(req.Items) == 0 || len(req.Items) > MaxSignBatch {
		return nil, fieldErr("items", "need 1 to %d items, got %d", MaxSignBatch, len(req.Items))
	}
	node, _ := ctx.Value(agentNodeKey).(string)
	caller, err := trust.AgentID(s.cfg.TrustDomain(), node)
	if err != nil {
		return nil, err
	}
	release, err := s.signShare.take(caller, "agent", len(req.Items))
	if err != nil {
		return nil, err
	}
	defer release()
	resp := &apipb.SignResponse{}
	for i, it := range req.Items {
		e, id, err := s.agentEntry(ctx, it.EntryId)
		if err != nil {
			return nil, fmt.Errorf("items[%d]: %w", i, err)
		}
		ttl := s.cfg.Authority.WorkloadSVIDTTL()
		if e.SvidTtl != nil {
			ttl = e.SvidTtl.AsDuration()
		}
		cert, err := s.signSVID(ctx, id, it.Csr, ttl)
		if err != nil {
			return nil, fmt.Errorf("items[%d]: %w", i, err)
		}
		resp.Svids = append(resp.Svids, &apipb.SignResponse_SVID{EntryId: e.Id, Chain: [][]byte{cert.Raw}})
	}
	return resp, nil
}
