package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/trust/svidfile"
)

// svidFetch is what `strait workload svid` reports (its --json form).
type svidFetch struct {
	Socket  string      `json:"socket"`
	SVIDs   []svidOut   `json:"svids"`
	Bundles []bundleOut `json:"bundles"`
	Dir     string      `json:"dir,omitempty"`
	Files   []string    `json:"files,omitempty"`
}

type svidOut struct {
	SpiffeID  string    `json:"spiffe_id"`
	Expires   time.Time `json:"expires"`
	Hint      string    `json:"hint,omitempty"`
	CertFile  string    `json:"cert_file,omitempty"`
	KeyFile   string    `json:"key_file,omitempty"`
	ChainSize int       `json:"chain_length"`
}

type bundleOut struct {
	TrustDomain string `json:"trust_domain"`
	Authorities int    `json:"authorities"`
	File        string `json:"file,omitempty"`
}

func newWorkloadSVIDCmd(g *globals) *cobra.Command {
	var socket, dir string
	cmd := &cobra.Command{
		Use:   "svid",
		Short: "Fetch this process's X.509 SVIDs and bundles from a Workload API, and write them to files",
		Long: `Ask a Workload API (the agent's socket) for the X.509 SVIDs this process is entitled
to, as any workload would, and print each SPIFFE ID and expiry. With --write, also write
them: svid.pem (the chain, leaf first) and svid_key.pem (PKCS#8, mode 0600) for the first
SVID, svid_N.pem and svid_N_key.pem for further ones, bundle.pem for the SVID's own trust
domain and bundle_<trust domain>.pem for each federated one.

The agent decides by who is asking (uid, gid, executable path): run it as the workload's
user to see what that workload gets.`,
		Example: `  strait workload svid --socket /run/strait/agent.sock
  sudo -u api strait workload svid --socket /run/strait/agent.sock --write /tmp/api-svid --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			socket = cmp.Or(socket, os.Getenv("SPIFFE_ENDPOINT_SOCKET"))
			if socket == "" {
				return usageError{fmt.Errorf("--socket (or SPIFFE_ENDPOINT_SOCKET) is required: the agent's Workload API socket")}
			}
			addr := socket
			if !strings.Contains(addr, "://") {
				abs, err := filepath.Abs(addr)
				if err != nil {
					return usageError{fmt.Errorf("--socket %q: %w", socket, err)}
				}
				addr = "unix://" + abs
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			x, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(addr))
			if err != nil {
				return explainFetch(socket, err)
			}
			out := svidFetch{Socket: socket, Dir: dir}
			type file struct {
				name string
				data []byte
				perm os.FileMode
			}
			var files []file
			for i, s := range x.SVIDs {
				so := svidOut{SpiffeID: s.ID.String(), Expires: s.Certificates[0].NotAfter.UTC(), Hint: s.Hint, ChainSize: len(s.Certificates)}
				if dir != "" {
					certs, key, err := s.Marshal()
					if err != nil {
						return fmt.Errorf("encode the SVID of %s: %w", s.ID, err)
					}
					so.CertFile, so.KeyFile = "svid.pem", "svid_key.pem"
					if i > 0 {
						so.CertFile, so.KeyFile = fmt.Sprintf("svid_%d.pem", i), fmt.Sprintf("svid_%d_key.pem", i)
					}
					files = append(files, file{so.CertFile, certs, 0o644}, file{so.KeyFile, key, 0o600})
				}
				out.SVIDs = append(out.SVIDs, so)
			}
			own := ""
			if len(x.SVIDs) > 0 {
				own = x.SVIDs[0].ID.TrustDomain().Name()
			}
			for _, b := range x.Bundles.Bundles() {
				bo := bundleOut{TrustDomain: b.TrustDomain().Name(), Authorities: len(b.X509Authorities())}
				if dir != "" {
					pem, err := b.Marshal()
					if err != nil {
						return fmt.Errorf("encode the bundle of %s: %w", bo.TrustDomain, err)
					}
					bo.File = "bundle_" + bo.TrustDomain + ".pem"
					if bo.TrustDomain == own {
						bo.File = "bundle.pem"
					}
					files = append(files, file{bo.File, pem, 0o644})
				}
				out.Bundles = append(out.Bundles, bo)
			}
			if dir != "" {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					return fmt.Errorf("--write: %w", err)
				}
				for _, f := range files {
					path := filepath.Join(dir, f.name)
					if err := svidfile.WriteFileAtomic(path, f.data, f.perm); err != nil {
						return fmt.Errorf("write %s: %w", path, err)
					}
					out.Files = append(out.Files, path)
				}
			}
			if g.json {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			w := g.stdout
			for _, s := range out.SVIDs {
				fmt.Fprintf(w, "SVID %s, expires %s\n", s.SpiffeID, expiresIn(s.Expires, true, time.Now()))
			}
			for _, b := range out.Bundles {
				fmt.Fprintf(w, "Bundle %s: %s\n", b.TrustDomain, countNoun(b.Authorities, "authority"))
			}
			if len(out.Files) > 0 {
				fmt.Fprintf(w, "Wrote %s\n", strings.Join(out.Files, ", "))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "the Workload API: a socket path or unix:///PATH (env SPIFFE_ENDPOINT_SOCKET)")
	f.StringVar(&dir, "write", "", "write the SVIDs, keys (0600) and bundles into this directory")
	return cmd
}

// explainFetch says what a failed Workload API fetch means.
func explainFetch(socket string, err error) error {
	switch status.Code(err) {
	case codes.PermissionDenied:
		return fmt.Errorf("the Workload API at %s issued no identity to this process (uid %d): %s: register one with `strait workload register --ns NS --svc SVC --agent NODE --selector unix:uid:%d`",
			socket, os.Getuid(), status.Convert(err).Message(), os.Getuid())
	case codes.Unavailable:
		return fmt.Errorf("cannot reach the Workload API at %s (is the agent running, and is this its --socket?): %s", socket, status.Convert(err).Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("the Workload API at %s sent no SVID in time (the agent may not have synced with its servers yet; see its log): %w", socket, err)
	}
	return fmt.Errorf("fetch from the Workload API at %s: %w", socket, err)
}
