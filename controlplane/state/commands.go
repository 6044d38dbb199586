package state

import (
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// Commands that carry what an API request gave: each converts the API's
// messages into the state format. Commands made of state messages only
// (Bootstrap, SetForeignBundle, AddPeer, ...) are built as they are.

// RegisterCommand creates or replaces a local service and, when given,
// one of its instances.
func RegisterCommand(req *apipb.RegisterRequest) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_Register{Register: registerToState(req)}}
}

// DeregisterCommand removes a local instance, or a whole local service.
func DeregisterCommand(req *apipb.DeregisterRequest) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_Deregister{Deregister: deregisterToState(req)}}
}

// SetHealthCommand sets the health of local instances.
func SetHealthCommand(keys []*apipb.InstanceKey, h apipb.Health) *statepb.Command {
	sh := &statepb.SetHealth{Health: statepb.Health(h)}
	for _, k := range keys {
		sh.Instances = append(sh.Instances, instanceKeyToState(k))
	}
	return &statepb.Command{Cmd: &statepb.Command_SetHealth{SetHealth: sh}}
}

// CreateTokenCommand stores a token by the hash of its secret; peerName
// is for federation invites (see TokenRecord).
func CreateTokenCommand(t *apipb.Token, secretHash []byte, peerName string) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_CreateToken{CreateToken: NewTokenRecord(t, secretHash, peerName)}}
}

// CreateEntryCommand creates a workload entry.
func CreateEntryCommand(e *apipb.WorkloadEntry) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_CreateEntry{CreateEntry: entryToState(e)}}
}

// SetExportCommand replaces a local service's export (an empty To removes
// it).
func SetExportCommand(e *apipb.Export) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_SetExport{SetExport: exportToState(e)}}
}

// SetAgentCommand stores an agent's record.
func SetAgentCommand(a *apipb.Agent) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_SetAgent{SetAgent: agentToState(a)}}
}

// SetGatewayCommand stores a gateway's record.
func SetGatewayCommand(g *apipb.GatewayRecord) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_SetGateway{SetGateway: gatewayToState(g)}}
}

// SetIntentionCommand creates or replaces an intention.
func SetIntentionCommand(in *apipb.Intention) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_SetIntention{SetIntention: intentionToState(in)}}
}

// ImportBatch is what a peer's replication stream delivered, as the store
// applies it (see statepb.ImportBatch for each field).
type ImportBatch struct {
	Peer    string
	Version uint64
	Resync  bool
	Changes []*apipb.Change
	// Gateways is set when the exporter announced its gateways.
	Gateways      *apipb.GatewaySet
	VirtualIPCIDR string
	// Limits are the peer's import quotas; nil: none.
	Limits *statepb.ImportLimits
}

// ImportCommand applies a batch of a peer's changes.
func ImportCommand(b *ImportBatch) *statepb.Command {
	return &statepb.Command{Cmd: &statepb.Command_ImportBatch{ImportBatch: b.toState()}}
}

func (b *ImportBatch) toState() *statepb.ImportBatch {
	out := &statepb.ImportBatch{Peer: b.Peer, Version: b.Version, Resync: b.Resync,
		VirtualIpCidr: b.VirtualIPCIDR, Limits: b.Limits, Changes: make([]*statepb.Change, len(b.Changes))}
	for i, c := range b.Changes {
		out.Changes[i] = changeToState(c)
	}
	out.Gateways = gatewaySetToState(b.Gateways)
	return out
}

// importBatchOf is the batch of an ImportBatch command, with the changes
// as the API has them.
func importBatchOf(b *statepb.ImportBatch) *ImportBatch {
	out := &ImportBatch{Peer: b.Peer, Version: b.Version, Resync: b.Resync,
		VirtualIPCIDR: b.VirtualIpCidr, Limits: b.Limits, Changes: make([]*apipb.Change, len(b.Changes))}
	for i, c := range b.Changes {
		out.Changes[i] = changeToAPI(c)
	}
	out.Gateways = gatewaySetToAPI(b.Gateways)
	return out
}
