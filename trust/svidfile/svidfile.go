// Package svidfile keeps an X.509-SVID, its private key and the CA bundle
// in a directory: svid.pem (chain, leaf first), svid.key (PKCS#8, 0600) and
// ca.pem. Writes are atomic (temporary file and rename); reads refuse a key
// file readable by group or others.
//
// Stateless; used by servers and agents for their own identities.
package svidfile

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names inside the directory.
const (
	SVIDFile   = "svid.pem"
	KeyFile    = "svid.key"
	BundleFile = "ca.pem"
)

// Write stores an SVID chain, its key (0600) and the bundle in dir.
func Write(dir string, chain []*x509.Certificate, key crypto.Signer, bundle []*x509.Certificate) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(dir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(dir, SVIDFile), encodeCerts(chain), 0o644); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, BundleFile), encodeCerts(bundle), 0o644)
}

// Read loads what Write stored.
func Read(dir string) (chain []*x509.Certificate, key crypto.Signer, bundle []*x509.Certificate, err error) {
	if chain, err = ReadCerts(filepath.Join(dir, SVIDFile)); err != nil {
		return
	}
	if bundle, err = ReadCerts(filepath.Join(dir, BundleFile)); err != nil {
		return
	}
	kp := filepath.Join(dir, KeyFile)
	fi, err := os.Stat(kp)
	if err != nil {
		return
	}
	if fi.Mode().Perm()&0o077 != 0 {
		err = fmt.Errorf("%s has permissions %04o; run chmod 600 on it", kp, fi.Mode().Perm())
		return
	}
	kb, err := os.ReadFile(kp)
	if err != nil {
		return
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		err = fmt.Errorf("%s: no PEM key", kp)
		return
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		err = fmt.Errorf("%s: %w", kp, err)
		return
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		err = fmt.Errorf("%s: not a signing key", kp)
	}
	return
}

// encodeCerts PEM-encodes certificates.
func encodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseCerts parses PEM certificates; it fails when there are none.
func ParseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificates")
	}
	return out, nil
}

// ReadCerts reads a PEM certificate file.
func ReadCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// WriteFileAtomic writes via a temporary file and rename, so a crash never
// leaves a half-written file.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
