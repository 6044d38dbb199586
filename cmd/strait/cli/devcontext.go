package cli

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/straitmesh/strait/controlplane"
)

// A dev server writes a context file (0600) so that CLI commands in another
// terminal work with no setup. It holds the dev site's management token;
// it is removed when the dev server stops. Only --dev writes it.
type devContext struct {
	Addr  string `json:"addr"`
	Token string `json:"token"`
	CA    string `json:"ca_pem"`
}

func devContextPath() (string, error) {
	if p := os.Getenv("STRAIT_DEV_CONTEXT"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "strait", "dev-context.json"), nil
}

func readDevContext() (*devContext, error) {
	p, err := devContextPath()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var dc devContext
	if err := json.Unmarshal(b, &dc); err != nil {
		return nil, err
	}
	if dc.Addr == "" {
		return nil, errors.New("dev context has no address")
	}
	return &dc, nil
}

func (dc *devContext) certs() ([]*x509.Certificate, error) {
	return controlplane.ReadCertsPEM([]byte(dc.CA))
}

func writeDevContext(dc *devContext) (string, error) {
	p, err := devContextPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(dc, "", "  ")
	if err != nil {
		return "", err
	}
	return p, os.WriteFile(p, b, 0o600)
}

// removeDevContext removes the context file if it still points at addr.
func removeDevContext(addr string) {
	if dc, err := readDevContext(); err == nil && dc.Addr == addr {
		if p, err := devContextPath(); err == nil {
			os.Remove(p)
		}
	}
}
