package controlplane

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/straitmesh/strait/trust/svidfile"
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

// CAFile is where a server keeps the site's CA certificates.
func CAFile(dataDirPath string) string { return dataDir(dataDirPath).path("tls", svidfile.BundleFile) }

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
	return svidfile.Write(d.path("tls"), chain, key, bundle)
}

func (d dataDir) readIdentity() ([]*x509.Certificate, crypto.Signer, []*x509.Certificate, error) {
	return svidfile.Read(d.path("tls"))
}

// ReadCertsPEM parses PEM certificates.
func ReadCertsPEM(b []byte) ([]*x509.Certificate, error) { return svidfile.ParseCerts(b) }

func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return svidfile.WriteFileAtomic(path, data, perm)
}
