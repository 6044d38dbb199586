package keywrap_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/straitmesh/strait/trust/keywrap"
)

func TestSealOpen(t *testing.T) {
	k, err := keywrap.Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := keywrap.Generate()
	secret := []byte("ca private key")
	sealed, err := k.Seal(secret, []byte("dc1.strait"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, secret) {
		t.Fatal("plaintext visible in sealed blob")
	}
	got, err := k.Open(sealed, []byte("dc1.strait"))
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("open: %q, %v", got, err)
	}
	if _, err := k.Open(sealed, []byte("dc2.strait")); err == nil {
		t.Fatal("opened with the wrong site context")
	}
	if _, err := other.Open(sealed, []byte("dc1.strait")); !errors.Is(err, keywrap.ErrWrongKey) {
		t.Fatalf("open with another KEK: %v, want ErrWrongKey", err)
	}
	flipped := append([]byte(nil), sealed...)
	flipped[len(flipped)-1] ^= 1
	if _, err := k.Open(flipped, []byte("dc1.strait")); err == nil {
		t.Fatal("opened a tampered blob")
	}
	if _, err := k.Open(sealed[:5], nil); err == nil {
		t.Fatal("opened a truncated blob")
	}
}

func TestFilePermissions(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "kek")
	k, _ := keywrap.Generate()
	if err := keywrap.WriteFile(p, k); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("kek file mode %04o, want 0600", fi.Mode().Perm())
	}
	if err := keywrap.WriteFile(p, k); err == nil {
		t.Fatal("overwrote an existing KEK")
	}
	l, err := keywrap.LoadFile(p)
	if err != nil || l.ID() != k.ID() {
		t.Fatalf("load: %v", err)
	}
	os.Chmod(p, 0o644)
	if _, err := keywrap.LoadFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("loaded a world-readable KEK: %v", err)
	}
}
