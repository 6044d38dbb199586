package policy

import (
	"strings"

	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// EvalRBAC evaluates the subset of Envoy's network RBAC that the xDS
// server generates (any permission; principals by authenticated name with
// exact or prefix matchers, combined with and/or/not) for a connection
// whose authenticated principal is principal. It fails closed: a rule it
// does not understand matches nothing, so an ALLOW rule denies.
func EvalRBAC(r *rbacconfig.RBAC, principal string) bool {
	matched := false
	for _, p := range r.GetPolicies() {
		if policyMatches(p, principal) {
			matched = true
			break
		}
	}
	switch r.GetAction() {
	case rbacconfig.RBAC_ALLOW:
		return matched
	case rbacconfig.RBAC_DENY:
		return !matched
	}
	return false
}

func policyMatches(p *rbacconfig.Policy, principal string) bool {
	perm := false
	for _, pm := range p.Permissions {
		if pm.GetAny() {
			perm = true
		}
	}
	if !perm {
		return false
	}
	for _, pr := range p.Principals {
		if principalMatches(pr, principal) {
			return true
		}
	}
	return false
}

func principalMatches(p *rbacconfig.Principal, principal string) bool {
	switch id := p.GetIdentifier().(type) {
	case *rbacconfig.Principal_Any:
		return id.Any
	case *rbacconfig.Principal_Authenticated_:
		return stringMatches(id.Authenticated.GetPrincipalName(), principal)
	case *rbacconfig.Principal_AndIds:
		for _, x := range id.AndIds.GetIds() {
			if !principalMatches(x, principal) {
				return false
			}
		}
		return len(id.AndIds.GetIds()) > 0
	case *rbacconfig.Principal_OrIds:
		for _, x := range id.OrIds.GetIds() {
			if principalMatches(x, principal) {
				return true
			}
		}
		return false
	case *rbacconfig.Principal_NotId:
		return !principalMatches(id.NotId, principal)
	}
	return false
}

func stringMatches(m *matcher.StringMatcher, s string) bool {
	switch p := m.GetMatchPattern().(type) {
	case *matcher.StringMatcher_Exact:
		return s == p.Exact
	case *matcher.StringMatcher_Prefix:
		return strings.HasPrefix(s, p.Prefix)
	}
	return false
}
