// Package policy decides whether a connection from a source to a service
// is allowed by the site's intentions. It is shared by the servers (the
// Check API, the xDS generator) and the gateways, so all decide alike.
//
// A source is "<site>/<namespace>/<service>" and a destination
// "<namespace>/<service>"; in intentions, the source's namespace and
// service and the destination's service may be "*". The most specific
// intention wins: an exact destination before "*", then the source with
// the most exact parts (site, then namespace, then service); between an
// allow and a deny equally specific, the deny. When nothing matches, the
// answer is no: across sites, only what is allowed passes.
//
// A source whose namespace or service is not known (a connection that
// carries its site's identity only) is decided fail-closed: an intention
// naming a source namespace or service it cannot be checked against
// applies if it denies, and does not if it allows. So a deny for one
// service of a site denies the whole site, and an allow for one service
// grants nothing, until connections carry their workload's identity.
package policy

import (
	"fmt"
	"strings"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
)

// Source is who opens a connection. Namespace and Service are empty when
// not known (then an intention naming them matches only if it denies).
type Source struct{ Site, Namespace, Service string }

func (s Source) String() string {
	return s.Site + "/" + orUnknown(s.Namespace) + "/" + orUnknown(s.Service)
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// ParseSource parses "<site>/<ns>/<svc>", where ns and svc may be "*"
// (and a missing part means "*": "site-a" is "site-a/*/*").
func ParseSource(s string) (site, ns, svc string, err error) {
	parts := strings.Split(s, "/")
	if len(parts) > 3 {
		return "", "", "", fmt.Errorf("%q: want <site>/<namespace>/<service>", s)
	}
	for len(parts) < 3 {
		parts = append(parts, "*")
	}
	for i, p := range parts {
		if p == "*" && i > 0 {
			continue
		}
		if p == "*" {
			return "", "", "", fmt.Errorf("%q: the site must be named", s)
		}
		if err := meshname.ValidLabel(p); err != nil {
			return "", "", "", fmt.Errorf("%q: %w", s, err)
		}
	}
	if parts[1] == "*" && parts[2] != "*" {
		return "", "", "", fmt.Errorf("%q: a service needs its namespace", s)
	}
	return parts[0], parts[1], parts[2], nil
}

// ParseDestination parses "<ns>/<svc>", where svc may be "*".
func ParseDestination(s string) (ns, svc string, err error) {
	ns, svc, ok := strings.Cut(s, "/")
	if !ok {
		return "", "", fmt.Errorf("%q: want <namespace>/<service>", s)
	}
	if err := meshname.ValidLabel(ns); err != nil {
		return "", "", fmt.Errorf("%q: %w", s, err)
	}
	if svc != "*" {
		if err := meshname.ValidLabel(svc); err != nil {
			return "", "", fmt.Errorf("%q: %w", s, err)
		}
	}
	return ns, svc, nil
}

// Normalize returns the canonical form of an intention's source
// ("site/ns/svc" with every part present).
func Normalize(source string) (string, error) {
	site, ns, svc, err := ParseSource(source)
	if err != nil {
		return "", err
	}
	return site + "/" + ns + "/" + svc, nil
}

// Decide returns whether src may connect to ns/svc, and the intention that
// decided (nil: none matched, so denied).
func Decide(intentions []*apipb.Intention, src Source, ns, svc string) (bool, *apipb.Intention) {
	var best *apipb.Intention
	bestScore := -1
	for _, in := range intentions {
		score, ok := match(in, src, ns, svc)
		if !ok {
			continue
		}
		if score > bestScore || (score == bestScore && in.Action == apipb.IntentionAction_INTENTION_ACTION_DENY) {
			best, bestScore = in, score
		}
	}
	if best == nil {
		return false, nil
	}
	return best.Action == apipb.IntentionAction_INTENTION_ACTION_ALLOW, best
}

// match reports whether in applies, and how specific it is.
func match(in *apipb.Intention, src Source, ns, svc string) (int, bool) {
	site, sns, ssvc, err := ParseSource(in.Source)
	if err != nil {
		return 0, false
	}
	dns, dsvc, err := ParseDestination(in.Destination)
	if err != nil || dns != ns || (dsvc != "*" && dsvc != svc) {
		return 0, false
	}
	deny := in.Action != apipb.IntentionAction_INTENTION_ACTION_ALLOW
	// part reports whether an intention's source part matches the
	// source's; an unknown part matches only a deny (fail-closed).
	part := func(want, have string) bool { return want == "*" || want == have || (have == "" && deny) }
	if site != src.Site || !part(sns, src.Namespace) || !part(ssvc, src.Service) {
		return 0, false
	}
	score := 0
	if dsvc != "*" {
		score += 8
	}
	if sns != "*" {
		score += 2
	}
	if ssvc != "*" {
		score++
	}
	return score, true
}

// Reason says in words what Decide decided and why, for who (the source
// as the caller knows it) connecting to dest ("<ns>/<svc>"): "allowed by
// intention allow <source> -> <destination>", "denied by intention deny
// <source> -> <destination>" (an explicit deny), or "no intention allows
// <who> to reach <dest>" (the default deny).
func Reason(allowed bool, matched *apipb.Intention, who, dest string) string {
	switch {
	case matched == nil:
		return fmt.Sprintf("no intention allows %s to reach %s", who, dest)
	case allowed:
		return fmt.Sprintf("allowed by intention allow %s -> %s", matched.Source, matched.Destination)
	}
	return fmt.Sprintf("denied by intention deny %s -> %s", matched.Source, matched.Destination)
}
