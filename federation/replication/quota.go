package replication

import (
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// Batch is what the importer commits at once: changes from the peer's
// stream, and the quotas they must fit in.
type Batch struct {
	Peer string
	// The exporter's catalog version the changes bring the import to.
	Version uint64
	// The changes are the peer's whole export: imports they do not name
	// are removed.
	Resync  bool
	Changes []*apipb.Change
	// Set when the exporter announced its gateways.
	Gateways *apipb.GatewaySet
	// This site's quotas on the peer's imports; nil: none.
	Limits *Limits
}

// Limits bound what one peer's imports may hold; zero: no bound.
type Limits struct {
	MaxServices, MaxInstances uint32
	// Bytes of the imported records as the peer sent them (see
	// Importer.Size).
	MaxBytes uint64
}

func (l *Limits) maxBytes() uint64 {
	if l == nil {
		return 0
	}
	return l.MaxBytes
}

// The quotas, as refusals name them (the same names as the state
// machine's).
const (
	QuotaServices  = "services"
	QuotaInstances = "instances"
	QuotaBytes     = "bytes"
)

// quotaExceeded is how an Apply error says a quota refused the batch
// (the state machine's QuotaError has this method).
type quotaExceeded interface {
	error
	ExceededQuota() string
}
