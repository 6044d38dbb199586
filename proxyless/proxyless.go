// Package proxyless prepares a grpc-go client to call services of other
// sites without a sidecar: an xDS bootstrap naming the site's servers,
// and the workload's SVID and the trust bundles as the files grpc-go's
// file_watcher certificate provider and xDS channel credentials read.
//
// With them, `grpc.NewClient("xds:///api.payments.aws-east.mesh", ...)`
// with grpc-go's xDS credentials resolves the name through Strait's xDS
// server, and calls the service over mTLS from end to end (the client's
// SVID, the service's checked against its site's bundle), through the
// site's gateways. grpc-go needs GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true
// in the environment to read SPIFFE bundle maps (gRFC A87).
//
// Stateless; safe to import from anywhere.
package proxyless

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/straitmesh/strait/trust/svidfile"
)

// File names in a workload's directory.
const (
	SVIDFile    = "svid.pem"     // the SVID and its chain
	KeyFile     = "svid_key.pem" // its private key (0600)
	BundlesFile = "bundles.json" // SPIFFE bundle map: every trust domain the workload trusts
)

// CertProvider is the certificate provider instance the generated
// clusters name (controlplane/xds.ProxylessCertProvider).
const CertProvider = "strait"

// WriteFiles writes the SVID, its key and the bundle map into dir,
// atomically, each file replaced whole (grpc-go reloads them).
func WriteFiles(dir string, svid *x509svid.SVID, bundles []*spiffebundle.Bundle) error {
	certs, key, err := svid.Marshal()
	if err != nil {
		return err
	}
	m := struct {
		TrustDomains map[string]json.RawMessage `json:"trust_domains"`
	}{TrustDomains: map[string]json.RawMessage{}}
	for _, b := range bundles {
		doc, err := b.Marshal()
		if err != nil {
			return err
		}
		m.TrustDomains[b.TrustDomain().Name()] = doc
	}
	doc, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	for name, f := range map[string]struct {
		data []byte
		perm os.FileMode
	}{SVIDFile: {certs, 0o644}, KeyFile: {key, 0o600}, BundlesFile: {doc, 0o644}} {
		if err := svidfile.WriteFileAtomic(filepath.Join(dir, name), f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

// Bootstrap returns a grpc-go xDS bootstrap: the site's servers (mTLS with
// the workload's SVID, the servers checked against the bundle map), the
// node ID (any name not starting with "gateway/"), and the certificate
// provider the generated clusters use, over the files in dir.
func Bootstrap(servers []string, nodeID, dir string) ([]byte, error) {
	if len(servers) == 0 {
		return nil, errors.New("proxyless: no server")
	}
	if nodeID == "" || strings.HasPrefix(nodeID, "gateway/") {
		return nil, fmt.Errorf("proxyless: node ID %q: want a name not starting with gateway/", nodeID)
	}
	files := map[string]string{
		"certificate_file":             filepath.Join(dir, SVIDFile),
		"private_key_file":             filepath.Join(dir, KeyFile),
		"spiffe_trust_bundle_map_file": filepath.Join(dir, BundlesFile),
	}
	type creds struct {
		Type   string            `json:"type"`
		Config map[string]string `json:"config"`
	}
	type server struct {
		URI      string   `json:"server_uri"`
		Creds    []creds  `json:"channel_creds"`
		Features []string `json:"server_features"`
	}
	var b struct {
		Servers []server `json:"xds_servers"`
		Node    struct {
			ID      string `json:"id"`
			Cluster string `json:"cluster"`
		} `json:"node"`
		Providers map[string]any `json:"certificate_providers"`
	}
	for _, s := range servers {
		b.Servers = append(b.Servers, server{URI: s, Creds: []creds{{Type: "tls", Config: files}}, Features: []string{"xds_v3"}})
	}
	b.Node.ID, b.Node.Cluster = nodeID, "proxyless"
	watcher := map[string]any{"refresh_interval": "60s"}
	for k, v := range files {
		watcher[k] = v
	}
	b.Providers = map[string]any{CertProvider: map[string]any{"plugin_name": "file_watcher", "config": watcher}}
	return json.MarshalIndent(b, "", "  ")
}

// Keep writes the workload's files from the Workload API at socket into
// dir, now and at every rotation, until ctx ends. written, when set, is
// called after each write.
func Keep(ctx context.Context, socket, dir string, written func(*x509svid.SVID)) error {
	w := &keeper{dir: dir, written: written, errs: make(chan error, 1)}
	err := workloadapi.WatchX509Context(ctx, w, workloadapi.WithAddr(socket))
	if ctx.Err() != nil {
		return nil
	}
	select {
	case werr := <-w.errs:
		return werr
	default:
	}
	return err
}

type keeper struct {
	dir     string
	written func(*x509svid.SVID)
	errs    chan error
}

func (k *keeper) OnX509ContextUpdate(c *workloadapi.X509Context) {
	svid := c.DefaultSVID()
	var bundles []*spiffebundle.Bundle
	for _, b := range c.Bundles.Bundles() {
		bundles = append(bundles, spiffebundle.FromX509Authorities(b.TrustDomain(), b.X509Authorities()))
	}
	if err := WriteFiles(k.dir, svid, bundles); err != nil {
		select {
		case k.errs <- err:
		default:
		}
		return
	}
	if k.written != nil {
		k.written(svid)
	}
}

func (k *keeper) OnX509ContextWatchError(error) {} // the watch retries by itself
