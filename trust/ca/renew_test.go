package ca_test

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/straitmesh/strait/trust/ca"
)

// TestNeedsRenewal walks one leaf through a CA rotation: the old root
// signs it, a new root is prepared (published, not signing), then
// activated, and its lifetime runs on.
func TestNeedsRenewal(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	old, err := ca.Generate(td, start, 0)
	if err != nil {
		t.Fatal(err)
	}
	prepared, err := ca.Generate(td, start.Add(time.Minute), 0)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.NewKey()
	id := spiffeid.RequireFromPath(td, "/strait/gateway/gw-1")
	sign := func(root *ca.CA, now time.Time) *x509.Certificate {
		t.Helper()
		leaf, err := root.SignX509SVID(id, key.Public(), now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return leaf
	}
	// Issued after the new root was prepared, by the root still active.
	fromOld := sign(old, start.Add(2*time.Minute))
	fromNew := sign(prepared, start.Add(2*time.Minute))
	half := ca.RenewAt(fromOld)

	tests := []struct {
		name   string
		leaf   *x509.Certificate
		active *x509.Certificate
		now    time.Time
		want   bool
	}{
		{"fresh leaf from the active root", fromOld, old.Certificate(), start.Add(3 * time.Minute), false},
		// The rotation case: a new root is published but the old one still
		// signs. Renewing would get another leaf from the old root, so a
		// leaf from the active root is kept, however new the other root.
		{"rotation prepared: leaf from the still-active root", fromOld, old.Certificate(), start.Add(10 * time.Minute), false},
		{"rotation activated: leaf from the retired root", fromOld, prepared.Certificate(), start.Add(10 * time.Minute), true},
		{"rotation activated: leaf already from the new root", fromNew, prepared.Certificate(), start.Add(10 * time.Minute), false},
		{"just before half-life", fromOld, old.Certificate(), half.Add(-time.Second), false},
		{"at half-life", fromOld, old.Certificate(), half, true},
		{"past half-life", fromOld, old.Certificate(), half.Add(time.Minute), true},
		{"active root unknown, fresh", fromOld, nil, start.Add(3 * time.Minute), false},
		{"active root unknown, past half-life", fromOld, nil, half, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ca.NeedsRenewal(tt.leaf, tt.active, tt.now); got != tt.want {
				t.Fatalf("NeedsRenewal = %v, want %v", got, tt.want)
			}
		})
	}
}
