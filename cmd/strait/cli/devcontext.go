package cli

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/straitmesh/strait/controlplane"
)

// A dev server writes a context file (0600) so that CLI commands in another
// terminal work with no setup. It holds the dev site's management token;
// it is removed when the dev server stops. Only --dev writes it.
//
// With STRAIT_DEV_CONTEXT, the file is exactly that path (the demo and the
// scenarios use it), and a dev server does not overwrite one that belongs
// to another live server. Without it, every dev server writes its own file
// in ~/.config/strait/dev/ (named for its API port), and the CLI uses the
// most recently started one whose server still runs: a second dev server
// in the same HOME takes over while it runs, and when it stops the CLI
// finds the first one again.
type devContext struct {
	Addr  string `json:"addr"`
	Token string `json:"token"`
	CA    string `json:"ca_pem"`
	// PID and Started identify the server that wrote the file (absent from
	// files the demo writes).
	PID     int       `json:"pid,omitempty"`
	Site    string    `json:"site,omitempty"`
	Started time.Time `json:"started,omitzero"`
}

// devContextDir is where dev servers write their files when
// STRAIT_DEV_CONTEXT is not set.
func devContextDir() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "strait", "dev"), nil
}

// readDevContext finds the context the CLI uses, and its path.
func readDevContext() (*devContext, string, error) {
	if p := os.Getenv("STRAIT_DEV_CONTEXT"); p != "" {
		dc, err := readDevContextFile(p)
		return dc, p, err
	}
	dir, err := devContextDir()
	if err != nil {
		return nil, "", err
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	var best *devContext
	var bestPath string
	for _, p := range files {
		dc, err := readDevContextFile(p)
		if err != nil || !dc.live() {
			continue
		}
		if best == nil || dc.Started.After(best.Started) {
			best, bestPath = dc, p
		}
	}
	if best == nil {
		return nil, "", fmt.Errorf("no running dev server has a context in %s: %w", dir, fs.ErrNotExist)
	}
	return best, bestPath, nil
}

func readDevContextFile(p string) (*devContext, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var dc devContext
	if err := json.Unmarshal(b, &dc); err != nil {
		return nil, fmt.Errorf("dev context %s: %w", p, err)
	}
	if dc.Addr == "" {
		return nil, fmt.Errorf("dev context %s has no address", p)
	}
	return &dc, nil
}

// live reports whether the server that wrote the context may still run:
// its process exists (files without a PID are taken as live).
func (dc *devContext) live() bool {
	if dc.PID <= 0 {
		return true
	}
	p, err := os.FindProcess(dc.PID)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

func (dc *devContext) certs() ([]*x509.Certificate, error) {
	return controlplane.ReadCertsPEM([]byte(dc.CA))
}

// writeDevContext writes dc where the CLI will find it and returns the
// path. It refuses to replace STRAIT_DEV_CONTEXT's file while the server
// that wrote it runs.
func writeDevContext(dc *devContext) (string, error) {
	dc.PID, dc.Started = os.Getpid(), time.Now()
	p := os.Getenv("STRAIT_DEV_CONTEXT")
	if p != "" {
		if old, err := readDevContextFile(p); err == nil && old.Addr != dc.Addr && old.PID != 0 && old.live() {
			return "", fmt.Errorf("%s belongs to the dev server at %s (pid %d), which still runs; set STRAIT_DEV_CONTEXT to another file", p, old.Addr, old.PID)
		}
	} else {
		dir, err := devContextDir()
		if err != nil {
			return "", err
		}
		_, port, _ := net.SplitHostPort(dc.Addr)
		p = filepath.Join(dir, "dev-"+strings.NewReplacer(":", "_", "/", "_").Replace(port)+".json")
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(dc, "", "  ")
	if err != nil {
		return "", err
	}
	// Write beside and rename, so a reader never sees half a file.
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return "", err
	}
	return p, os.Rename(tmp, p)
}

// removeDevContext removes the context file at p if it is still this
// server's (addr).
func removeDevContext(p, addr string) {
	if dc, err := readDevContextFile(p); err == nil && dc.Addr == addr {
		os.Remove(p)
	}
}
