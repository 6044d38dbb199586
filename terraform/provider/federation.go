package provider

import (
	"context"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// strait_federation_token: a one-time join token of this site for a peer.

type federationToken struct {
	client
	named
}

type federationTokenModel struct {
	ID      types.String `tfsdk:"id"`
	Peer    types.String `tfsdk:"peer"`
	TTL     types.String `tfsdk:"ttl"`
	Token   types.String `tfsdk:"token"`
	Expires types.String `tfsdk:"expires"`
}

func newFederationToken() resource.Resource { return &federationToken{named: "_federation_token"} }

func (r *federationToken) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "A single-use token that lets another site federate with this one (`strait federation token`). Destroying it revokes it if unused.",
		Attributes: map[string]schema.Attribute{
			"id":      schema.StringAttribute{Computed: true, Description: "The token's accessor ID.", PlanModifiers: keep},
			"peer":    schema.StringAttribute{Optional: true, Description: "The name this site will give the peer that uses the token.", PlanModifiers: replace},
			"ttl":     schema.StringAttribute{Optional: true, Computed: true, Default: stringdefault.StaticString("15m"), Description: "How long the token is valid (a Go duration).", PlanModifiers: replace, Validators: durationValidators},
			"token":   schema.StringAttribute{Computed: true, Sensitive: true, Description: "The token, for `strait_peering` on the other site.", PlanModifiers: keep},
			"expires": schema.StringAttribute{Computed: true, Description: "When the token expires (RFC 3339).", PlanModifiers: keep},
		},
	}
}

func (r *federationToken) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	planToState(ctx, req.Plan, &resp.State, &resp.Diagnostics, "create federation token", func(ctx context.Context, m *federationTokenModel) error {
		ttl, _ := time.ParseDuration(m.TTL.ValueString())
		out, err := r.cl.Federation.CreateInvite(ctx, &apipb.CreateInviteRequest{Peer: m.Peer.ValueString(), Ttl: durationpb.New(ttl)})
		if err != nil {
			return err
		}
		m.ID = types.StringValue(out.AccessorId)
		m.Token = types.StringValue(out.Token)
		m.Expires = types.StringValue(out.Expires.AsTime().UTC().Format(time.RFC3339))
		return nil
	})
}

// Read keeps the token in state even once used or expired: it is a record
// of what was issued, and recreating it would change nothing on the site.
func (r *federationToken) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var m federationTokenModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func (r *federationToken) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	recordPlan[federationTokenModel](ctx, req, resp)
}

func (r *federationToken) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	remove(ctx, req, resp, "revoke federation token", func(ctx context.Context, m *federationTokenModel) error {
		_, err := r.cl.ACL.RevokeToken(ctx, &apipb.RevokeTokenRequest{AccessorId: m.ID.ValueString()})
		return err
	})
}

// strait_peering: this site joins another with that site's token.

type peering struct {
	client
	named
}

type peeringModel struct {
	ID          types.String `tfsdk:"id"`
	Token       types.String `tfsdk:"token"`
	Name        types.String `tfsdk:"name"`
	Site        types.String `tfsdk:"site"`
	TrustDomain types.String `tfsdk:"trust_domain"`
}

func newPeering() resource.Resource { return &peering{named: "_peering"} }

func (r *peering) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "A peering made by joining another site with its federation token (`strait federation join`). Destroying it removes the peering on both sides.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, Description: "The peer's local name.", PlanModifiers: keep},
			"token": schema.StringAttribute{Required: true, Sensitive: true, Description: "The other site's federation token.",
				// An imported peering has no token in state: recording the
				// configured one must not replace the peering.
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplaceIf(func(ctx context.Context, req planmodifier.StringRequest, resp *stringplanmodifier.RequiresReplaceIfFuncResponse) {
					resp.RequiresReplace = !req.StateValue.IsNull()
				}, "A new token makes a new peering.", "A new token makes a new peering.")}},
			"name": schema.StringAttribute{Optional: true, Computed: true, Description: "This site's name for the peer (default: the peer's site name).",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace(), stringplanmodifier.UseStateForUnknown()}},
			"site":         schema.StringAttribute{Computed: true, Description: "The peer's site name.", PlanModifiers: keep},
			"trust_domain": schema.StringAttribute{Computed: true, Description: "The peer's trust domain.", PlanModifiers: keep},
		},
	}
}

func (r *peering) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	planToState(ctx, req.Plan, &resp.State, &resp.Diagnostics, "join the peer", func(ctx context.Context, m *peeringModel) error {
		out, err := r.cl.Federation.Join(ctx, &apipb.JoinFederationRequest{Token: m.Token.ValueString(), Name: m.Name.ValueString()})
		if err != nil {
			return err
		}
		setPeer(m, out.Peer)
		return nil
	})
}

func setPeer(m *peeringModel, p *apipb.Peer) {
	m.ID, m.Name = types.StringValue(p.Name), types.StringValue(p.Name)
	m.Site, m.TrustDomain = types.StringValue(p.Site), types.StringValue(p.TrustDomain)
}

func (r *peering) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	refresh(ctx, req, resp, "read the peering", func(ctx context.Context, m *peeringModel, _ *diag.Diagnostics) (bool, error) {
		out, err := r.cl.Federation.List(ctx, &apipb.ListPeersFedRequest{Name: m.ID.ValueString()})
		if notFound(err) || (err == nil && len(out.Peers) == 0) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		setPeer(m, out.Peers[0])
		return true, nil
	})
}

// Update only records a token after an import; nothing changes on the site.
func (r *peering) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	recordPlan[peeringModel](ctx, req, resp)
}

func (r *peering) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	remove(ctx, req, resp, "remove the peering", func(ctx context.Context, m *peeringModel) error {
		_, err := r.cl.Federation.Remove(ctx, &apipb.RemovePeeringRequest{Name: m.ID.ValueString()})
		return err
	})
}

// ImportState takes the peer's local name.
func (r *peering) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	resource.ImportStatePassthroughID(ctx, path.Root("id"), req, resp)
}
