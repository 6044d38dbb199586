package provider

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
)

// The resources' CRUD methods share their shape: read the model M from
// the plan or the state, make one API call (or a list and a match), and
// store the model or drop the resource. These helpers are that shape;
// each resource gives its call and the words of its errors.

// named gives a resource its type name: the provider's, then the suffix.
type named string

func (n named) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + string(n)
}

// planToState reads the model from plan, calls apply (which may fill in
// computed attributes) and stores the model as the new state. An error
// from apply becomes a diagnostic saying what was attempted.
func planToState[M any](ctx context.Context, plan tfsdk.Plan, state *tfsdk.State, d *diag.Diagnostics, what string,
	apply func(context.Context, *M) error) {
	var m M
	d.Append(plan.Get(ctx, &m)...)
	if d.HasError() {
		return
	}
	if err := apply(ctx, &m); err != nil {
		apiError(d, what, err)
		return
	}
	d.Append(state.Set(ctx, &m)...)
}

// refresh is a Read: it reads the model from the state and has find
// refresh it from the site. found false (the object is gone from the
// site) removes the resource; an error becomes a diagnostic saying what
// was attempted.
func refresh[M any](ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse, what string,
	find func(ctx context.Context, m *M, d *diag.Diagnostics) (found bool, err error)) {
	var m M
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	found, err := find(ctx, &m, &resp.Diagnostics)
	if err != nil {
		apiError(&resp.Diagnostics, what, err)
		return
	}
	if !found {
		resp.State.RemoveResource(ctx)
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// remove is a Delete: it reads the model from the state and calls del;
// an object already gone is not an error.
func remove[M any](ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse, what string,
	del func(context.Context, *M) error) {
	var m M
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if err := del(ctx, &m); err != nil && !notFound(err) {
		apiError(&resp.Diagnostics, what, err)
	}
}
