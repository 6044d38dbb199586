package provider

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework-validators/setvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// strait_export: a local service exported to chosen peers.

type export struct {
	client
	named
}

type exportModel struct {
	ID        types.String `tfsdk:"id"`
	Namespace types.String `tfsdk:"namespace"`
	Service   types.String `tfsdk:"service"`
	To        types.Set    `tfsdk:"to"`
}

func newExport() resource.Resource { return &export{named: "_export"} }

func (r *export) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	resp.Schema = schema.Schema{
		Description: "Exports a service of this site to peers (`strait export`). Only exported services leave a site.",
		Attributes: map[string]schema.Attribute{
			"id":        schema.StringAttribute{Computed: true, Description: "namespace/service.", PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()}},
			"namespace": schema.StringAttribute{Required: true, PlanModifiers: replace, Description: "The service's namespace."},
			"service":   schema.StringAttribute{Required: true, PlanModifiers: replace, Description: "The service's name."},
			"to": schema.SetAttribute{Required: true, ElementType: types.StringType, Validators: []validator.Set{setvalidator.SizeAtLeast(1)},
				Description: "Peers (their local names) the service is exported to, or [\"*\"] for every peer."},
		},
	}
}

func (r *export) peers(ctx context.Context, m *exportModel) ([]string, bool) {
	var to []string
	return to, !m.To.ElementsAs(ctx, &to, false).HasError()
}

func (r *export) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var m exportModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	to, ok := r.peers(ctx, &m)
	if resp.Diagnostics.HasError() || !ok {
		return
	}
	if _, err := r.cl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: m.Namespace.ValueString(), Service: m.Service.ValueString(), To: to}}); err != nil {
		apiError(&resp.Diagnostics, "export", err)
		return
	}
	m.ID = types.StringValue(m.Namespace.ValueString() + "/" + m.Service.ValueString())
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func (r *export) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	refresh(ctx, req, resp, "list exports", func(ctx context.Context, m *exportModel, diags *diag.Diagnostics) (bool, error) {
		ns, svc, _ := strings.Cut(m.ID.ValueString(), "/")
		out, err := r.cl.Federation.ListExports(ctx, &apipb.ListExportsRequest{})
		if err != nil {
			return false, err
		}
		for _, e := range out.Exports {
			if e.Namespace == ns && e.Service == svc {
				m.Namespace, m.Service = types.StringValue(ns), types.StringValue(svc)
				to, d := types.SetValueFrom(ctx, types.StringType, e.To)
				diags.Append(d...)
				m.To = to
				return true, nil
			}
		}
		return false, nil
	})
}

func (r *export) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state exportModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	want, ok1 := r.peers(ctx, &plan)
	have, ok2 := r.peers(ctx, &state)
	if resp.Diagnostics.HasError() || !ok1 || !ok2 {
		return
	}
	ns, svc := plan.Namespace.ValueString(), plan.Service.ValueString()
	// Add first, then remove: the service is never exported to nobody.
	if _, err := r.cl.Federation.Export(ctx, &apipb.ExportRequest{Export: &apipb.Export{Namespace: ns, Service: svc, To: want}}); err != nil {
		apiError(&resp.Diagnostics, "export", err)
		return
	}
	var gone []string
	for _, p := range have {
		if !slices.Contains(want, p) {
			gone = append(gone, p)
		}
	}
	if len(gone) > 0 {
		if _, err := r.cl.Federation.Unexport(ctx, &apipb.UnexportRequest{Namespace: ns, Service: svc, From: gone}); err != nil {
			apiError(&resp.Diagnostics, "unexport", err)
			return
		}
	}
	plan.ID = state.ID
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *export) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	remove(ctx, req, resp, "unexport", func(ctx context.Context, m *exportModel) error {
		_, err := r.cl.Federation.Unexport(ctx, &apipb.UnexportRequest{Namespace: m.Namespace.ValueString(), Service: m.Service.ValueString()})
		return err
	})
}

// ImportState takes "namespace/service".
func (r *export) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if ns, svc, ok := strings.Cut(req.ID, "/"); !ok || ns == "" || svc == "" || strings.Contains(svc, "/") {
		resp.Diagnostics.AddError("Invalid import ID", fmt.Sprintf("%q: want namespace/service", req.ID))
		return
	}
	resource.ImportStatePassthroughID(ctx, path.Root("id"), req, resp)
}

// strait_intention: whether a source may call a destination.

type intention struct {
	client
	named
}

type intentionModel struct {
	ID          types.String `tfsdk:"id"`
	Source      types.String `tfsdk:"source"`
	Destination types.String `tfsdk:"destination"`
	Action      types.String `tfsdk:"action"`
	Description types.String `tfsdk:"description"`
}

func newIntention() resource.Resource { return &intention{named: "_intention"} }

func (r *intention) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	resp.Schema = schema.Schema{
		Description: "Allows or denies calls from a source to a destination service (`strait intention`). Across sites, what no intention allows is denied.",
		Attributes: map[string]schema.Attribute{
			"id":          schema.StringAttribute{Computed: true, Description: "source,destination.", PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()}},
			"source":      schema.StringAttribute{Required: true, PlanModifiers: replace, Description: "site, site/namespace or site/namespace/service; * wildcards a part."},
			"destination": schema.StringAttribute{Required: true, PlanModifiers: replace, Description: "namespace/service of this site; * wildcards a part."},
			"action": schema.StringAttribute{Required: true, Validators: []validator.String{stringvalidator.OneOf("allow", "deny")},
				Description: "allow or deny."},
			"description": schema.StringAttribute{Optional: true, Computed: true, Default: stringdefault.StaticString(""), Description: "Why."},
		},
	}
}

func (r *intention) set(ctx context.Context, m *intentionModel) error {
	action := apipb.IntentionAction_INTENTION_ACTION_DENY
	if m.Action.ValueString() == "allow" {
		action = apipb.IntentionAction_INTENTION_ACTION_ALLOW
	}
	_, err := r.cl.Intentions.Set(ctx, &apipb.SetIntentionRequest{Intention: &apipb.Intention{
		Source: m.Source.ValueString(), Destination: m.Destination.ValueString(), Action: action, Description: m.Description.ValueString()}})
	return err
}

func (r *intention) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	planToState(ctx, req.Plan, &resp.State, &resp.Diagnostics, "set intention", func(ctx context.Context, m *intentionModel) error {
		if err := r.set(ctx, m); err != nil {
			return err
		}
		m.ID = types.StringValue(m.Source.ValueString() + "," + m.Destination.ValueString())
		return nil
	})
}

func (r *intention) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	refresh(ctx, req, resp, "list intentions", func(ctx context.Context, m *intentionModel, _ *diag.Diagnostics) (bool, error) {
		src, dst, _ := strings.Cut(m.ID.ValueString(), ",")
		out, err := r.cl.Intentions.List(ctx, &apipb.ListIntentionsRequest{})
		if err != nil {
			return false, err
		}
		for _, in := range out.Intentions {
			if in.Source == src && in.Destination == dst {
				m.Source, m.Destination = types.StringValue(src), types.StringValue(dst)
				m.Action = types.StringValue("deny")
				if in.Action == apipb.IntentionAction_INTENTION_ACTION_ALLOW {
					m.Action = types.StringValue("allow")
				}
				m.Description = types.StringValue(in.Description)
				return true, nil
			}
		}
		return false, nil
	})
}

func (r *intention) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	planToState(ctx, req.Plan, &resp.State, &resp.Diagnostics, "set intention", r.set)
}

func (r *intention) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	remove(ctx, req, resp, "delete intention", func(ctx context.Context, m *intentionModel) error {
		_, err := r.cl.Intentions.Delete(ctx, &apipb.DeleteIntentionRequest{Source: m.Source.ValueString(), Destination: m.Destination.ValueString()})
		return err
	})
}

// ImportState takes "source,destination".
func (r *intention) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if src, dst, ok := strings.Cut(req.ID, ","); !ok || src == "" || dst == "" {
		resp.Diagnostics.AddError("Invalid import ID", fmt.Sprintf("%q: want source,destination (e.g. site-a/payments/web,payments/api)", req.ID))
		return
	}
	resource.ImportStatePassthroughID(ctx, path.Root("id"), req, resp)
}
