package provider

import (
	"context"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// strait_acl_token: an API token (`strait token create`).

type aclToken struct {
	client
	named
}

type aclTokenModel struct {
	ID          types.String `tfsdk:"id"`
	Kind        types.String `tfsdk:"kind"`
	Description types.String `tfsdk:"description"`
	TTL         types.String `tfsdk:"ttl"`
	MaxUses     types.Int64  `tfsdk:"max_uses"`
	Secret      types.String `tfsdk:"secret"`
	Expires     types.String `tfsdk:"expires"`
}

var tokenKinds = []string{"management", "write", "read", "server", "agent", "gateway"}

func newACLToken() resource.Resource { return &aclToken{named: "_acl_token"} }

func (r *aclToken) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "An API token of this site. The secret is known only to the resource that created it (not after an import). Any change replaces the token; destroying it revokes it.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, Description: "The accessor ID.", PlanModifiers: keep},
			"kind": schema.StringAttribute{Required: true, PlanModifiers: replace, Validators: []validator.String{stringvalidator.OneOf(tokenKinds...)},
				Description: "management, write, read, server, agent or gateway."},
			"description": schema.StringAttribute{Optional: true, Computed: true, Default: stringdefault.StaticString(""), PlanModifiers: replace},
			"ttl": schema.StringAttribute{Optional: true, PlanModifiers: replace, Validators: durationValidators,
				Description: "Lifetime (a Go duration); none when unset (server tokens: 1h)."},
			"max_uses": schema.Int64Attribute{Optional: true, PlanModifiers: []planmodifier.Int64{int64planmodifier.RequiresReplace()},
				Description: "How many joins the token admits (agent, gateway, server tokens)."},
			"secret":  schema.StringAttribute{Computed: true, Sensitive: true, Description: "The token's secret.", PlanModifiers: keep},
			"expires": schema.StringAttribute{Computed: true, Description: "Expiry (RFC 3339), empty when none.", PlanModifiers: keep},
		},
	}
}

func (r *aclToken) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	planToState(ctx, req.Plan, &resp.State, &resp.Diagnostics, "create token", func(ctx context.Context, m *aclTokenModel) error {
		in := &apipb.CreateTokenRequest{Kind: apipb.TokenKind(apipb.TokenKind_value["TOKEN_KIND_"+strings.ToUpper(m.Kind.ValueString())]),
			Description: m.Description.ValueString(), MaxUses: uint32(m.MaxUses.ValueInt64())}
		if !m.TTL.IsNull() {
			d, _ := time.ParseDuration(m.TTL.ValueString())
			in.Ttl = durationpb.New(d)
		}
		out, err := r.cl.ACL.CreateToken(ctx, in)
		if err != nil {
			return err
		}
		m.ID, m.Secret = types.StringValue(out.Token.AccessorId), types.StringValue(out.Secret)
		m.Expires = types.StringValue(expiry(out.Token))
		return nil
	})
}

func expiry(t *apipb.Token) string {
	if t.ExpireTime == nil {
		return ""
	}
	return t.ExpireTime.AsTime().UTC().Format(time.RFC3339)
}

func (r *aclToken) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	refresh(ctx, req, resp, "list tokens", func(ctx context.Context, m *aclTokenModel, _ *diag.Diagnostics) (bool, error) {
		out, err := r.cl.ACL.ListTokens(ctx, &apipb.ListTokensRequest{})
		if err != nil {
			return false, err
		}
		for _, t := range out.Tokens {
			if t.AccessorId != m.ID.ValueString() {
				continue
			}
			m.Kind = types.StringValue(strings.ToLower(strings.TrimPrefix(t.Kind.String(), "TOKEN_KIND_")))
			m.Description = types.StringValue(t.Description)
			m.Expires = types.StringValue(expiry(t))
			if t.MaxUses > 0 && (!m.MaxUses.IsNull() || m.Secret.IsNull()) {
				m.MaxUses = types.Int64Value(int64(t.MaxUses))
			}
			return true, nil
		}
		return false, nil // revoked
	})
}

func (r *aclToken) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	recordPlan[aclTokenModel](ctx, req, resp)
}

func (r *aclToken) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	remove(ctx, req, resp, "revoke token", func(ctx context.Context, m *aclTokenModel) error {
		_, err := r.cl.ACL.RevokeToken(ctx, &apipb.RevokeTokenRequest{AccessorId: m.ID.ValueString()})
		return err
	})
}

// ImportState takes the accessor ID.
func (r *aclToken) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	resource.ImportStatePassthroughID(ctx, path.Root("id"), req, resp)
}
