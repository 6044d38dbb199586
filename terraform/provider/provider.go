// Package provider is the Terraform provider for Strait
// (terraform-plugin-framework): what operators change day to day through
// a site's API — federation tokens, peerings, exports, intentions and ACL
// tokens — as resources with import support. Each provider block talks
// to one site; use aliases for several.
package provider

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/trust/svidfile"
)

// Address is the provider's registry address.
const Address = "registry.terraform.io/straitmesh/strait"

// New returns the provider factory for providerserver.
func New(version string) func() provider.Provider {
	return func() provider.Provider { return &straitProvider{version: version} }
}

type straitProvider struct{ version string }

type providerModel struct {
	Address types.String `tfsdk:"address"`
	Token   types.String `tfsdk:"token"`
	CAFile  types.String `tfsdk:"ca_file"`
	CAPEM   types.String `tfsdk:"ca_pem"`
}

func (p *straitProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "strait"
	resp.Version = p.version
}

func (p *straitProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "Manages a Strait site through its API (mTLS): federation tokens, peerings, exports, intentions and ACL tokens.",
		Attributes: map[string]schema.Attribute{
			"address": schema.StringAttribute{Optional: true, Description: "A server of the site, host:port (env STRAIT_ADDR)."},
			"token":   schema.StringAttribute{Optional: true, Sensitive: true, Description: "A management token (env STRAIT_TOKEN)."},
			"ca_file": schema.StringAttribute{Optional: true, Description: "PEM file of the site CA that verifies the server (env STRAIT_CA_FILE)."},
			"ca_pem":  schema.StringAttribute{Optional: true, Description: "The site CA as PEM text, instead of ca_file."},
		},
	}
}

func (p *straitProvider) Configure(ctx context.Context, req provider.ConfigureRequest, resp *provider.ConfigureResponse) {
	var m providerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	or := func(v types.String, env string) string {
		if !v.IsNull() && !v.IsUnknown() {
			return v.ValueString()
		}
		return os.Getenv(env)
	}
	cfg := apiclient.Config{Addr: or(m.Address, "STRAIT_ADDR"), Token: or(m.Token, "STRAIT_TOKEN"), CAFile: or(m.CAFile, "STRAIT_CA_FILE")}
	if cfg.Addr == "" || cfg.Token == "" {
		resp.Diagnostics.AddError("Strait provider not configured", "set address and token (or STRAIT_ADDR and STRAIT_TOKEN)")
		return
	}
	if pem := m.CAPEM.ValueString(); pem != "" {
		certs, err := svidfile.ParseCerts([]byte(pem))
		if err != nil {
			resp.Diagnostics.AddError("Invalid ca_pem", err.Error())
			return
		}
		cfg.CA, cfg.CAFile = certs, ""
	}
	if cfg.CAFile == "" && cfg.CA == nil {
		resp.Diagnostics.AddError("Strait provider not configured", "set ca_file or ca_pem (or STRAIT_CA_FILE): the site CA that verifies its servers")
		return
	}
	cl, err := apiclient.Dial(cfg)
	if err != nil {
		resp.Diagnostics.AddError("Cannot reach the Strait site", err.Error())
		return
	}
	resp.ResourceData = cl
}

func (p *straitProvider) Resources(context.Context) []func() resource.Resource {
	return []func() resource.Resource{newFederationToken, newPeering, newExport, newIntention, newACLToken}
}

func (p *straitProvider) DataSources(context.Context) []func() datasource.DataSource { return nil }

// client is embedded by resources to receive the provider's API client.
type client struct{ cl *apiclient.Client }

func (c *client) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	if req.ProviderData == nil {
		return // the provider is not configured yet (validation)
	}
	cl, ok := req.ProviderData.(*apiclient.Client)
	if !ok {
		resp.Diagnostics.AddError("Unexpected provider data", fmt.Sprintf("%T", req.ProviderData))
		return
	}
	c.cl = cl
}

// apiError turns an API error into a diagnostic naming what was attempted.
func apiError(d *diag.Diagnostics, what string, err error) {
	d.AddError("Strait: "+what, status.Convert(err).Message())
}

func notFound(err error) bool { return status.Code(err) == codes.NotFound }

// recordPlan is the Update of a resource whose changes all replace it but
// for what the site does not hold (an imported peering's token): the plan
// becomes the state, nothing is called.
func recordPlan[M any](ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var m M
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
