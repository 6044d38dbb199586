package enroll

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Servers refuse a revoked agent's or gateway's SVID with PermissionDenied
// carrying an ErrorInfo of this reason and domain, so that the node can
// tell a revocation (final) from a server that has not heard of it yet
// (retried).
const (
	ReasonRevoked = "IDENTITY_REVOKED"
	ErrorDomain   = "strait"
)

// ErrRevoked is returned by an agent or gateway whose identity the site
// revoked: it stops, and re-joins only with a new token.
var ErrRevoked = errors.New("revoked")

// RevokedStatus is the servers' refusal of a revoked node of kind
// ("agent", "gateway") named name.
func RevokedStatus(kind, name string) error {
	st := status.Newf(codes.PermissionDenied, "%s %q was revoked (`strait %s revoke %s`); re-join it with a new token", kind, name, kind, name)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: ReasonRevoked, Domain: ErrorDomain, Metadata: map[string]string{"kind": kind, "name": name}}); err == nil {
		st = d
	}
	return st.Err()
}

// IsRevoked reports whether err is a server's refusal of a revoked
// identity (RevokedStatus), as opposed to any other PermissionDenied.
func IsRevoked(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.PermissionDenied {
		return false
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.Reason == ReasonRevoked && ei.Domain == ErrorDomain {
			return true
		}
	}
	return false
}

// ConfirmRevokedAfter is how long servers must keep answering "revoked"
// before a node believes it: a server that has not yet applied a re-join
// (a new token after a revocation) still answers so for a moment.
const ConfirmRevokedAfter = 3 * time.Second

// RevocationWatch tells a node when to act on the servers' revocation
// answers: when they persist, with no success between, for
// ConfirmRevokedAfter. The zero value is ready; it is safe for concurrent
// use.
type RevocationWatch struct {
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	mu    sync.Mutex
	since time.Time // first revoked answer since the last success
}

// Confirmed records err (a call's outcome) and reports whether it is a
// revocation to act on now.
func (w *RevocationWatch) Confirmed(err error) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !IsRevoked(err) {
		if err == nil {
			w.since = time.Time{}
		}
		return false
	}
	now := time.Now()
	if w.Now != nil {
		now = w.Now()
	}
	if w.since.IsZero() {
		w.since = now
	}
	return now.Sub(w.since) >= ConfirmRevokedAfter
}

// revokedSuffix marks an info file set aside by MarkRevoked.
const revokedSuffix = ".revoked"

// MarkRevoked sets aside the revoked identity kept in dir (its info file
// becomes <infoFile>.revoked), so that the next start enrolls again with a
// new token instead of loading it.
func MarkRevoked(dir, infoFile string) error {
	path := filepath.Join(dir, infoFile)
	if err := os.Rename(path, path+revokedSuffix); err != nil {
		return fmt.Errorf("set aside the revoked identity: %w", err)
	}
	return nil
}

// Revoked returns the error a node of kind named name stops with once the
// servers said it was revoked: what happened and how to re-join.
func Revoked(kind, name string) error {
	return fmt.Errorf("this %s (%q) was %w by `strait %s revoke %s`: create a new token with `strait token create --kind %s` and start it again with --join-token to re-join",
		kind, name, ErrRevoked, kind, name, kind)
}

func wasRevoked(dir, infoFile string) bool {
	_, err := os.Stat(filepath.Join(dir, infoFile) + revokedSuffix)
	return err == nil
}
