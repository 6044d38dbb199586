package agent

import (
	"context"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/trust"
	"github.com/straitmesh/strait/trust/workloadapi"
)

// JWT-SVIDs are signed by the servers on demand and cached per entry and
// audience until half their lifetime has passed.

type jwtKey struct{ entry, audience string }

type jwtSVID struct {
	token           string
	issued, expires time.Time
}

// JWTSVIDs implements workloadapi.JWTSource.
func (a *Agent) JWTSVIDs(ctx context.Context, c workloadapi.Caller, audience []string, id string) ([]workloadapi.JWTSVID, bool, error) {
	sel := c.Selectors()
	now := a.cfg.Now()
	aud := strings.Join(audience, "\x00")
	var want []*apipb.WorkloadEntry
	var out []workloadapi.JWTSVID
	entitled := false
	a.mu.Lock()
	for _, e := range a.entries {
		if !matches(e, sel) {
			continue
		}
		entitled = true
		wid, err := trust.WorkloadID(a.td, e.Namespace, e.Service)
		if err != nil || (id != "" && wid.String() != id) {
			continue
		}
		if j, ok := a.jwts[jwtKey{e.Id, aud}]; ok && now.Before(j.issued.Add(j.expires.Sub(j.issued)/2)) {
			out = append(out, workloadapi.JWTSVID{ID: wid, Token: j.token})
			continue
		}
		want = append(want, e)
	}
	a.mu.Unlock()
	for _, e := range want {
		resp, err := a.client.Identity.SignJWTSVID(ctx, &apipb.SignJWTRequest{EntryId: e.Id, Audience: audience})
		if err != nil {
			return nil, entitled, err
		}
		tok, err := jwt.ParseSigned(resp.Token, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			return nil, entitled, err
		}
		var claims jwt.Claims
		if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
			return nil, entitled, err
		}
		wid, _ := trust.WorkloadID(a.td, e.Namespace, e.Service)
		a.mu.Lock()
		a.jwts[jwtKey{e.Id, aud}] = &jwtSVID{token: resp.Token, issued: now, expires: now.Add(claims.Expiry.Time().Sub(claims.IssuedAt.Time()))}
		a.mu.Unlock()
		out = append(out, workloadapi.JWTSVID{ID: wid, Token: resp.Token})
	}
	return out, entitled, nil
}

// JWTBundles implements workloadapi.JWTSource.
func (a *Agent) JWTBundles() []*jwtbundle.Bundle {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*jwtbundle.Bundle
	if a.jwtAuth != nil {
		out = append(out, a.jwtAuth)
	}
	for _, b := range a.fed {
		if len(b.JWTAuthorities()) > 0 {
			out = append(out, b.JWTBundle())
		}
	}
	return out
}
