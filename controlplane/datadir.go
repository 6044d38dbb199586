package controlplane

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Data directory layout:
//
//	node.json         this server's node ID, site, trust domain, join index
//	tls/svid.pem      this server's SVID chain (leaf first)
//	tls/svid.key      its private key (0600)
//	tls/ca.pem        the site's CA certificates (public; give it to CLI users)
//	kek               the key-encryption key (0600), unless kek_file says otherwise
//	raft/wal/         the Raft log and stable store (raft-wal segments)
//	raft/snapshots/   Raft snapshots
type nodeInfo struct {
	NodeID      string `json:"node_id"`
	Site        string `json:"site"`
	TrustDomain string `json:"trust_domain"`
	// JoinIndex is the Raft index at which this server was added as a
	// non-voter; it asks to vote once it has applied it. Zero for the
	// bootstrap server.
	JoinIndex uint64 `json:"join_index,omitempty"`
}

type dataDir string

func (d dataDir) path(p ...string) string { return filepath.Join(append([]string{string(d)}, p...)...) }
func (d dataDir) nodeFile() string        { return d.path("node.json") }
func (d dataDir) svidFile() string        { return d.path("tls", "svid.pem") }
func (d dataDir) keyFile() string         { return d.path("tls", "svid.key") }

// CAFile is where a server keeps the site's CA certificates.
func CAFile(dataDirPath string) string { return dataDir(dataDirPath).path("tls", "ca.pem") }

func (d dataDir) readNode() (*nodeInfo, error) {
	b, err := os.ReadFile(d.nodeFile())
	if err != nil {
		return nil, err
	}
	var n nodeInfo
	if err := json.Unmarshal(b, &n); err != nil {
		return nil, fmt.Errorf("%s: %w", d.nodeFile(), err)
	}
	return &n, nil
}

func (d dataDir) writeNode(n *nodeInfo) error {
	b, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(d.nodeFile(), append(b, '\n'), 0o644)
}

func (d dataDir) hasRaftState() bool {
	entries, err := os.ReadDir(d.path("raft", "wal"))
	return err == nil && len(entries) > 0
}

// writeIdentity stores the SVID, its key (0600) and the CA bundle.
func (d dataDir) writeIdentity(chain []*x509.Certificate, key crypto.Signer, bundle []*x509.Certificate) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(d.keyFile(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(d.svidFile(), encodeCerts(chain), 0o644); err != nil {
		return err
	}
	return writeFileAtomic(CAFile(string(d)), encodeCerts(bundle), 0o644)
}

func (d dataDir) readIdentity() (chain []*x509.Certificate, key crypto.Signer, bundle []*x509.Certificate, err error) {
	if chain, err = readCerts(d.svidFile()); err != nil {
		return
	}
	if bundle, err = readCerts(CAFile(string(d))); err != nil {
		return
	}
	fi, err := os.Stat(d.keyFile())
	if err != nil {
		return
	}
	if fi.Mode().Perm()&0o077 != 0 {
		err = fmt.Errorf("%s has permissions %04o; run chmod 600 on it", d.keyFile(), fi.Mode().Perm())
		return
	}
	kb, err := os.ReadFile(d.keyFile())
	if err != nil {
		return
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		err = fmt.Errorf("%s: no PEM key", d.keyFile())
		return
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		err = fmt.Errorf("%s: %w", d.keyFile(), err)
		return
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		err = fmt.Errorf("%s: not a signing key", d.keyFile())
	}
	return
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ReadCertsPEM parses PEM certificates.
func ReadCertsPEM(b []byte) ([]*x509.Certificate, error) {
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

func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ReadCertsPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// writeFileAtomic writes via a temporary file and rename, so a crash never
// leaves a half-written file.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
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
