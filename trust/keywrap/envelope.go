package keywrap

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/straitmesh/strait/trust/svidfile"
)

// KeyService is an external key manager (a cloud KMS) that generates and
// decrypts data keys under a key it never releases. The encryption
// context is authenticated: a data key decrypts only with the context it
// was made with.
type KeyService interface {
	// GenerateDataKey returns a new 256-bit data key and its ciphertext.
	GenerateDataKey(ctx context.Context, encContext map[string]string) (plaintext, ciphertext []byte, keyID string, err error)
	// Decrypt returns the data key in ciphertext.
	Decrypt(ctx context.Context, ciphertext []byte, encContext map[string]string) ([]byte, error)
}

// Envelope is the on-disk form of a KEK under a key service: the KEK
// sealed (AES-256-GCM) with a data key, and the data key encrypted by
// the service. Neither the KEK nor the data key is ever on disk in the
// clear; rotating the data key re-seals the same KEK under a new one.
type Envelope struct {
	Version int `json:"version"`
	// Service names the key service ("aws-kms"), KeyID its key.
	Service string `json:"service"`
	KeyID   string `json:"key_id"`
	// DataKey is the data key as the service encrypted it.
	DataKey []byte `json:"data_key"`
	// SealedKEK is nonce || AES-GCM(data key, KEK), the KEK's ID as AAD.
	SealedKEK []byte `json:"sealed_kek"`
	// KEKID identifies the sealed KEK (see FileKEK.ID).
	KEKID string `json:"kek_id"`
	// Created is when the data key was made (for rotation).
	Created time.Time `json:"created"`
}

// ErrKeyService wraps failures of the key service (unreachable, access
// denied, wrong context), so that callers can tell them from local ones.
var ErrKeyService = errors.New("key service")

// SealEnvelope seals k under a fresh data key from svc.
func SealEnvelope(ctx context.Context, k *FileKEK, svc KeyService, service string, encContext map[string]string, now time.Time) (*Envelope, error) {
	dk, wrapped, keyID, err := svc.GenerateDataKey(ctx, encContext)
	if err != nil {
		return nil, fmt.Errorf("%w: generate a data key: %w", ErrKeyService, err)
	}
	defer clear(dk)
	aead, err := gcm(dk)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	sealed := aead.Seal(nonce, nonce, k.raw, []byte(k.ID()))
	return &Envelope{Version: 1, Service: service, KeyID: keyID, DataKey: wrapped, SealedKEK: sealed, KEKID: k.ID(), Created: now.UTC()}, nil
}

// Open decrypts the data key with svc and opens the KEK.
func (e *Envelope) Open(ctx context.Context, svc KeyService, encContext map[string]string) (*FileKEK, error) {
	if e.Version != 1 {
		return nil, fmt.Errorf("open key-encryption key: unknown envelope version %d", e.Version)
	}
	dk, err := svc.Decrypt(ctx, e.DataKey, encContext)
	if err != nil {
		return nil, fmt.Errorf("%w: decrypt the data key (key %s): %w", ErrKeyService, e.KeyID, err)
	}
	defer clear(dk)
	aead, err := gcm(dk)
	if err != nil {
		return nil, err
	}
	ns := aead.NonceSize()
	if len(e.SealedKEK) < ns+aead.Overhead() {
		return nil, errors.New("open key-encryption key: sealed key too short")
	}
	raw, err := aead.Open(nil, e.SealedKEK[:ns], e.SealedKEK[ns:], []byte(e.KEKID))
	if err != nil {
		return nil, errors.New("open key-encryption key: authentication failed (the envelope is corrupt)")
	}
	k, err := New(raw)
	clear(raw)
	if err != nil {
		return nil, err
	}
	if k.ID() != e.KEKID {
		return nil, fmt.Errorf("open key-encryption key: envelope names %s, holds %s", e.KEKID, k.ID())
	}
	return k, nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	if len(key) != keySize {
		return nil, fmt.Errorf("data key must be %d bytes, got %d", keySize, len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// isEnvelope reports whether b (a KEK file's contents) is an envelope
// rather than a raw key.
func isEnvelope(b []byte) bool { return bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) }

// ReadEnvelope reads an envelope file, refusing one readable by others.
func ReadEnvelope(path string) (*Envelope, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load key-encryption key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load key-encryption key: %s has permissions %04o; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key-encryption key: %w", err)
	}
	if !isEnvelope(b) {
		return nil, fmt.Errorf("load key-encryption key: %s holds a plain key, but a key service is configured: wrap it first (see README, \"On AWS\")", path)
	}
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("load key-encryption key %s: %w", path, err)
	}
	return &e, nil
}

// WriteEnvelope stores e at path (0600). With replace, an existing file
// is replaced atomically (rename), so a crash leaves the old or the new
// envelope, never a torn one; without, an existing file is an error.
func WriteEnvelope(path string, e *Envelope, replace bool) error {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	if !replace {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("write key-encryption key: %s already exists", path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return svidfile.WriteFileAtomic(path, append(b, '\n'), 0o600)
}
