package state

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// ACL tokens: stored by accessor ID, found by the hash of their secret.

// HashSecret is how token secrets are stored: SHA-256. Secrets are 256
// random bits, so a slow password hash would add nothing.
func HashSecret(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// TokenBySecret resolves a secret to its token, if it exists.
func (s *Store) TokenBySecret(hash [32]byte) (*TokenRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	acc, ok := s.byHash[hash]
	if !ok {
		return nil, false
	}
	return s.tokens[acc], true
}

// Tokens lists tokens sorted by creation time.
func (s *Store) Tokens() []*apipb.Token {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*apipb.Token, 0, len(s.tokens))
	for _, t := range s.tokens {
		out = append(out, t.Token)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].CreateTime.AsTime(), out[j].CreateTime.AsTime()
		if !a.Equal(b) {
			return a.Before(b)
		}
		return out[i].AccessorId < out[j].AccessorId
	})
	return out
}

func (s *Store) putToken(t *TokenRecord) {
	var h [32]byte
	copy(h[:], t.SecretHash)
	s.tokens[t.Token.AccessorId] = t
	s.byHash[h] = t.Token.AccessorId
}

func (t *tx) applyCreateToken(rec *TokenRecord) error {
	if _, ok := t.s.tokens[rec.Token.AccessorId]; ok {
		return fmt.Errorf("create token: accessor %s exists: %w", rec.Token.AccessorId, ErrConflict)
	}
	t.s.putToken(rec)
	return nil
}

func (t *tx) applyRevokeToken(req *statepb.RevokeToken) error {
	rec, ok := t.s.tokens[req.AccessorId]
	if !ok {
		return fmt.Errorf("token %s: %w", req.AccessorId, ErrNotFound)
	}
	var h [32]byte
	copy(h[:], rec.SecretHash)
	delete(t.s.byHash, h)
	delete(t.s.tokens, req.AccessorId)
	return nil
}

// applyConsumeToken returns the token as it was before this use.
func (t *tx) applyConsumeToken(req *statepb.ConsumeToken) (*apipb.Token, error) {
	var h [32]byte
	copy(h[:], req.SecretHash)
	acc, ok := t.s.byHash[h]
	if !ok {
		return nil, fmt.Errorf("unknown or revoked: %w", ErrTokenInvalid)
	}
	rec := t.s.tokens[acc]
	if err := Usable(rec.Token, t.now); err != nil {
		return nil, err
	}
	t.s.tokens[acc] = rec.used()
	return rec.Token, nil
}

// Usable reports why a token cannot be used at now, or nil.
func Usable(t *apipb.Token, now time.Time) error {
	if t.ExpireTime != nil && !now.Before(t.ExpireTime.AsTime()) {
		return fmt.Errorf("expired at %s: %w", t.ExpireTime.AsTime().Format(time.RFC3339), ErrTokenInvalid)
	}
	if t.MaxUses > 0 && t.Uses >= t.MaxUses {
		return fmt.Errorf("already used: %w", ErrTokenInvalid)
	}
	return nil
}

// used returns a copy of the record with one more use.
func (r *TokenRecord) used() *TokenRecord {
	n := *r
	n.Token = proto.Clone(r.Token).(*apipb.Token)
	n.Token.Uses++
	return &n
}
