// Package keywrap seals secrets at rest, above all the site CA's private
// key, with a key-encryption key (KEK) kept outside the replicated state.
//
// The KEK is a 256-bit AES-GCM key in a file with 0600 permissions. Sealed
// blobs name the KEK they were sealed with (an 8-byte key ID) and bind an
// associated context (the trust domain), so opening with the wrong key or
// for the wrong site fails with a clear error instead of garbage.
//
// A FileKEK is immutable and safe for concurrent use.
package keywrap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrWrongKey means a blob was sealed with another key-encryption key.
var ErrWrongKey = errors.New("sealed with a different key-encryption key")

const (
	keySize    = 32
	version    = 1
	keyIDSize  = 8
	headerSize = 1 + keyIDSize
)

// FileKEK is a key-encryption key held in memory, loaded from a file.
type FileKEK struct {
	aead cipher.AEAD
	id   [keyIDSize]byte
	raw  []byte
}

// New returns a KEK for the given 32 raw bytes.
func New(raw []byte) (*FileKEK, error) {
	if len(raw) != keySize {
		return nil, fmt.Errorf("key-encryption key must be %d bytes, got %d", keySize, len(raw))
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	k := &FileKEK{aead: aead, raw: append([]byte(nil), raw...)}
	sum := sha256.Sum256(append([]byte("strait-kek-id\x00"), raw...))
	copy(k.id[:], sum[:])
	return k, nil
}

// Generate returns a new random KEK.
func Generate() (*FileKEK, error) {
	raw := make([]byte, keySize)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	return New(raw)
}

// ID identifies the key without revealing it.
func (k *FileKEK) ID() string { return hex.EncodeToString(k.id[:]) }

// Raw returns the key bytes, for handing to a joining server over mTLS.
func (k *FileKEK) Raw() []byte { return append([]byte(nil), k.raw...) }

// Seal encrypts plaintext, binding context: context is authenticated but
// not encrypted, and Open fails unless it is given the same context.
func (k *FileKEK) Seal(plaintext, context []byte) ([]byte, error) {
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := make([]byte, 0, headerSize+len(nonce)+len(plaintext)+k.aead.Overhead())
	out = append(out, version)
	out = append(out, k.id[:]...)
	out = append(out, nonce...)
	return k.aead.Seal(out, nonce, plaintext, aad(out[:headerSize], context)), nil
}

// Open decrypts a blob from Seal.
func (k *FileKEK) Open(sealed, context []byte) ([]byte, error) {
	ns := k.aead.NonceSize()
	if len(sealed) < headerSize+ns+k.aead.Overhead() {
		return nil, errors.New("open sealed key: too short")
	}
	if sealed[0] != version {
		return nil, fmt.Errorf("open sealed key: unknown format version %d", sealed[0])
	}
	if string(sealed[1:headerSize]) != string(k.id[:]) {
		return nil, fmt.Errorf("open sealed key: %w (sealed with %x, have %s)", ErrWrongKey, sealed[1:headerSize], k.ID())
	}
	nonce := sealed[headerSize : headerSize+ns]
	pt, err := k.aead.Open(nil, nonce, sealed[headerSize+ns:], aad(sealed[:headerSize], context))
	if err != nil {
		return nil, errors.New("open sealed key: authentication failed (corrupt, or sealed for another site)")
	}
	return pt, nil
}

func aad(header, context []byte) []byte {
	return append(append([]byte(nil), header...), context...)
}

// LoadFile reads a KEK file. It refuses a file readable by group or others.
func LoadFile(path string) (*FileKEK, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load key-encryption key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load key-encryption key: %s has permissions %04o; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key-encryption key: %w", err)
	}
	k, err := New(raw)
	if err != nil {
		return nil, fmt.Errorf("load key-encryption key %s: %w", path, err)
	}
	return k, nil
}

// WriteFile stores k at path with 0600 permissions, refusing to overwrite.
func WriteFile(path string, k *FileKEK) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("write key-encryption key: %s already exists", path)
		}
		return fmt.Errorf("write key-encryption key: %w", err)
	}
	if _, err := f.Write(k.raw); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
