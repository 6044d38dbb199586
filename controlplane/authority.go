package controlplane

import (
	"log/slog"
	"time"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/trust/authority"
	"github.com/straitmesh/strait/trust/ca"
	"github.com/straitmesh/strait/trust/mtls"
)

// kekFile is where this server keeps the site's KEK.
func (c *Config) kekFile(log *slog.Logger) *authority.KEKFile {
	return &authority.KEKFile{
		Path: c.KEKFile, KeyService: c.KeyService, KeyServiceName: c.KeyServiceName,
		DataKeyRotation: c.DataKeyRotation, Now: c.Now, Logger: log,
	}
}

// maxLeafTTL covers the longest leaf a root can have signed: MaxLeafTTL,
// or the longest SVID lifetime plus the backdating.
func (c *Config) maxLeafTTL() time.Duration {
	if c.MaxLeafTTL > 0 {
		return c.MaxLeafTTL
	}
	return max(c.ServerSVIDTTL, api.MaxSVIDTTL, api.AgentSVIDTTL) + ca.Backdate
}

// newAuthority builds the site authority over this server's identity,
// its replica of the state and its Raft node.
func newAuthority(c *Config, id *identity, ident *mtls.Identity, store *state.Store, cons authority.Consensus, log *slog.Logger) (*authority.Authority, error) {
	ac := authority.Config{
		TrustDomain: id.td, KEK: id.kek, Identity: ident, Store: store, Consensus: cons,
		ServerSVIDTTL: c.ServerSVIDTTL, WorkloadSVIDTTL: c.WorkloadSVIDTTL,
		CAPropagationDelay: c.CAPropagationDelay, MaxLeafTTL: c.maxLeafTTL(),
		BundleRefreshHint: c.BundleRefreshHint, SignRate: c.SignRate,
		Registerer: c.Registerer, Now: c.Now, Logger: log,
	}
	if id.persistent {
		ac.Persist = dataDir(c.DataDir).writeIdentity
	}
	return authority.New(ac)
}
