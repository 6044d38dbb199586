// Package meshname validates the names Strait puts into DNS: sites,
// namespaces, services, instance IDs and server node names. All of them are
// DNS labels: lowercase letters, digits and hyphens, 1 to 63 characters, not
// starting or ending with a hyphen.
//
// It has no state and is safe to import from anywhere.
package meshname

import (
	"fmt"
)

// MaxLabel is the longest DNS label.
const MaxLabel = 63

// DefaultNamespace is the namespace of services registered without one.
const DefaultNamespace = "default"

// ValidLabel returns a user-facing error when s is not a DNS label.
func ValidLabel(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if len(s) > MaxLabel {
		return fmt.Errorf("%q is %d characters; at most %d are allowed", truncate(s), len(s), MaxLabel)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-':
			if i == 0 || i == len(s)-1 {
				return fmt.Errorf("%q must not start or end with '-'", s)
			}
		case c >= 'A' && c <= 'Z':
			return fmt.Errorf("%q must be lowercase", s)
		default:
			return fmt.Errorf("%q has %q; only a-z, 0-9 and '-' are allowed", s, rune(c))
		}
	}
	return nil
}

// Site is a validated site name.
type Site string

// ParseSite validates s as a site name.
func ParseSite(s string) (Site, error) {
	if err := ValidLabel(s); err != nil {
		return "", fmt.Errorf("site name: %w", err)
	}
	return Site(s), nil
}

func (s Site) String() string { return string(s) }

func truncate(s string) string {
	if len(s) > 70 {
		return s[:67] + "..."
	}
	return s
}
