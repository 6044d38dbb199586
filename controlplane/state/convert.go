package state

import (
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// Conversion between the API's messages and the state format's (statepb):
// commands are built from API messages (commands.go), apply turns them
// back into the API messages the readers see, and snapshots are written
// and read in the state format.
//
// Each state message mirrors its API message field by field (same numbers,
// names and types: TestFormatDecidesEveryAPIField), and each pair of
// functions below copies every field the two share
// (TestConversionKeepsEveryPersistedField); an API field listed as not
// persisted is left out. The copies are shallow: maps, Timestamps and
// Durations are shared, as stored values are never modified.

func portsToState(ps []*apipb.ServicePort) []*statepb.ServicePort {
	if ps == nil {
		return nil
	}
	out := make([]*statepb.ServicePort, len(ps))
	for i, p := range ps {
		out[i] = &statepb.ServicePort{Name: p.Name, Protocol: statepb.Protocol(p.Protocol)}
	}
	return out
}

func portsToAPI(ps []*statepb.ServicePort) []*apipb.ServicePort {
	if ps == nil {
		return nil
	}
	out := make([]*apipb.ServicePort, len(ps))
	for i, p := range ps {
		out[i] = &apipb.ServicePort{Name: p.Name, Protocol: apipb.Protocol(p.Protocol)}
	}
	return out
}

func serviceToState(v *apipb.Service) *statepb.Service {
	if v == nil {
		return nil
	}
	return &statepb.Service{Namespace: v.Namespace, Name: v.Name, Ports: portsToState(v.Ports), Meta: v.Meta,
		CreateIndex: v.CreateIndex, ModifyIndex: v.ModifyIndex, Peer: v.Peer, VirtualIp: v.VirtualIp}
}

func serviceToAPI(v *statepb.Service) *apipb.Service {
	if v == nil {
		return nil
	}
	return &apipb.Service{Namespace: v.Namespace, Name: v.Name, Ports: portsToAPI(v.Ports), Meta: v.Meta,
		CreateIndex: v.CreateIndex, ModifyIndex: v.ModifyIndex, Peer: v.Peer, VirtualIp: v.VirtualIp}
}

func instanceToState(v *apipb.Instance) *statepb.Instance {
	if v == nil {
		return nil
	}
	return &statepb.Instance{Namespace: v.Namespace, Service: v.Service, Id: v.Id, Address: v.Address, Ports: v.Ports,
		Zone: v.Zone, Meta: v.Meta, Health: statepb.Health(v.Health), Ttl: v.Ttl,
		CreateIndex: v.CreateIndex, ModifyIndex: v.ModifyIndex, Peer: v.Peer}
}

func instanceToAPI(v *statepb.Instance) *apipb.Instance {
	if v == nil {
		return nil
	}
	return &apipb.Instance{Namespace: v.Namespace, Service: v.Service, Id: v.Id, Address: v.Address, Ports: v.Ports,
		Zone: v.Zone, Meta: v.Meta, Health: apipb.Health(v.Health), Ttl: v.Ttl,
		CreateIndex: v.CreateIndex, ModifyIndex: v.ModifyIndex, Peer: v.Peer}
}

func serviceKeyToState(v *apipb.ServiceKey) *statepb.ServiceKey {
	if v == nil {
		return nil
	}
	return &statepb.ServiceKey{Namespace: v.Namespace, Name: v.Name, Peer: v.Peer}
}

func serviceKeyToAPI(v *statepb.ServiceKey) *apipb.ServiceKey {
	if v == nil {
		return nil
	}
	return &apipb.ServiceKey{Namespace: v.Namespace, Name: v.Name, Peer: v.Peer}
}

func instanceKeyToState(v *apipb.InstanceKey) *statepb.InstanceKey {
	if v == nil {
		return nil
	}
	return &statepb.InstanceKey{Namespace: v.Namespace, Service: v.Service, Id: v.Id, Peer: v.Peer}
}

func instanceKeyToAPI(v *statepb.InstanceKey) *apipb.InstanceKey {
	if v == nil {
		return nil
	}
	return &apipb.InstanceKey{Namespace: v.Namespace, Service: v.Service, Id: v.Id, Peer: v.Peer}
}

func registerToState(v *apipb.RegisterRequest) *statepb.Register {
	if v == nil {
		return nil
	}
	return &statepb.Register{Service: serviceToState(v.Service), Instance: instanceToState(v.Instance)}
}

func registerToAPI(v *statepb.Register) *apipb.RegisterRequest {
	if v == nil {
		return nil
	}
	return &apipb.RegisterRequest{Service: serviceToAPI(v.Service), Instance: instanceToAPI(v.Instance)}
}

func deregisterToState(v *apipb.DeregisterRequest) *statepb.Deregister {
	if v == nil {
		return nil
	}
	return &statepb.Deregister{Namespace: v.Namespace, Service: v.Service, InstanceId: v.InstanceId}
}

func deregisterToAPI(v *statepb.Deregister) *apipb.DeregisterRequest {
	if v == nil {
		return nil
	}
	return &apipb.DeregisterRequest{Namespace: v.Namespace, Service: v.Service, InstanceId: v.InstanceId}
}

func changeToState(v *apipb.Change) *statepb.Change {
	if v == nil {
		return nil
	}
	out := &statepb.Change{}
	switch x := v.Change.(type) {
	case *apipb.Change_Service:
		out.Change = &statepb.Change_Service{Service: serviceToState(x.Service)}
	case *apipb.Change_Instance:
		out.Change = &statepb.Change_Instance{Instance: instanceToState(x.Instance)}
	case *apipb.Change_ServiceDeleted:
		out.Change = &statepb.Change_ServiceDeleted{ServiceDeleted: serviceKeyToState(x.ServiceDeleted)}
	case *apipb.Change_InstanceDeleted:
		out.Change = &statepb.Change_InstanceDeleted{InstanceDeleted: instanceKeyToState(x.InstanceDeleted)}
	}
	return out
}

func changeToAPI(v *statepb.Change) *apipb.Change {
	if v == nil {
		return nil
	}
	out := &apipb.Change{}
	switch x := v.Change.(type) {
	case *statepb.Change_Service:
		out.Change = &apipb.Change_Service{Service: serviceToAPI(x.Service)}
	case *statepb.Change_Instance:
		out.Change = &apipb.Change_Instance{Instance: instanceToAPI(x.Instance)}
	case *statepb.Change_ServiceDeleted:
		out.Change = &apipb.Change_ServiceDeleted{ServiceDeleted: serviceKeyToAPI(x.ServiceDeleted)}
	case *statepb.Change_InstanceDeleted:
		out.Change = &apipb.Change_InstanceDeleted{InstanceDeleted: instanceKeyToAPI(x.InstanceDeleted)}
	}
	return out
}

func gatewaySetToState(v *apipb.GatewaySet) *statepb.GatewaySet {
	if v == nil {
		return nil
	}
	return &statepb.GatewaySet{Addresses: v.Addresses}
}

func gatewaySetToAPI(v *statepb.GatewaySet) *apipb.GatewaySet {
	if v == nil {
		return nil
	}
	return &apipb.GatewaySet{Addresses: v.Addresses}
}

func tokenToState(v *apipb.Token) *statepb.Token {
	if v == nil {
		return nil
	}
	return &statepb.Token{AccessorId: v.AccessorId, Kind: statepb.TokenKind(v.Kind), Description: v.Description,
		CreateTime: v.CreateTime, ExpireTime: v.ExpireTime, MaxUses: v.MaxUses, Uses: v.Uses}
}

func tokenToAPI(v *statepb.Token) *apipb.Token {
	if v == nil {
		return nil
	}
	return &apipb.Token{AccessorId: v.AccessorId, Kind: apipb.TokenKind(v.Kind), Description: v.Description,
		CreateTime: v.CreateTime, ExpireTime: v.ExpireTime, MaxUses: v.MaxUses, Uses: v.Uses}
}

func entryToState(v *apipb.WorkloadEntry) *statepb.WorkloadEntry {
	if v == nil {
		return nil
	}
	out := &statepb.WorkloadEntry{Id: v.Id, Namespace: v.Namespace, Service: v.Service, Agent: v.Agent,
		SvidTtl: v.SvidTtl, CreateIndex: v.CreateIndex}
	if v.Selectors != nil {
		out.Selectors = make([]*statepb.Selector, len(v.Selectors))
		for i, s := range v.Selectors {
			if s != nil {
				out.Selectors[i] = &statepb.Selector{Type: s.Type, Key: s.Key, Value: s.Value}
			}
		}
	}
	return out
}

func entryToAPI(v *statepb.WorkloadEntry) *apipb.WorkloadEntry {
	if v == nil {
		return nil
	}
	out := &apipb.WorkloadEntry{Id: v.Id, Namespace: v.Namespace, Service: v.Service, Agent: v.Agent,
		SvidTtl: v.SvidTtl, CreateIndex: v.CreateIndex}
	if v.Selectors != nil {
		out.Selectors = make([]*apipb.Selector, len(v.Selectors))
		for i, s := range v.Selectors {
			if s != nil {
				out.Selectors[i] = &apipb.Selector{Type: s.Type, Key: s.Key, Value: s.Value}
			}
		}
	}
	return out
}

func exportToState(v *apipb.Export) *statepb.Export {
	if v == nil {
		return nil
	}
	return &statepb.Export{Namespace: v.Namespace, Service: v.Service, To: v.To}
}

func exportToAPI(v *statepb.Export) *apipb.Export {
	if v == nil {
		return nil
	}
	return &apipb.Export{Namespace: v.Namespace, Service: v.Service, To: v.To}
}

func agentToState(v *apipb.Agent) *statepb.Agent {
	if v == nil {
		return nil
	}
	return &statepb.Agent{Node: v.Node, Joined: v.Joined, TokenAccessor: v.TokenAccessor, Revoked: v.Revoked}
}

func agentToAPI(v *statepb.Agent) *apipb.Agent {
	if v == nil {
		return nil
	}
	return &apipb.Agent{Node: v.Node, Joined: v.Joined, TokenAccessor: v.TokenAccessor, Revoked: v.Revoked}
}

func gatewayToState(v *apipb.GatewayRecord) *statepb.GatewayRecord {
	if v == nil {
		return nil
	}
	return &statepb.GatewayRecord{Name: v.Name, Joined: v.Joined, TokenAccessor: v.TokenAccessor, Revoked: v.Revoked}
}

func gatewayToAPI(v *statepb.GatewayRecord) *apipb.GatewayRecord {
	if v == nil {
		return nil
	}
	return &apipb.GatewayRecord{Name: v.Name, Joined: v.Joined, TokenAccessor: v.TokenAccessor, Revoked: v.Revoked}
}

func intentionToState(v *apipb.Intention) *statepb.Intention {
	if v == nil {
		return nil
	}
	return &statepb.Intention{Source: v.Source, Destination: v.Destination, Action: statepb.IntentionAction(v.Action),
		Description: v.Description, CreateIndex: v.CreateIndex, ModifyIndex: v.ModifyIndex}
}

func intentionToAPI(v *statepb.Intention) *apipb.Intention {
	if v == nil {
		return nil
	}
	return &apipb.Intention{Source: v.Source, Destination: v.Destination, Action: apipb.IntentionAction(v.Action),
		Description: v.Description, CreateIndex: v.CreateIndex, ModifyIndex: v.ModifyIndex}
}

// TokenRecord is a stored ACL token: the token as the API shows it, the
// hash of its secret, and for a federation invite the name the invited
// site gets here.
type TokenRecord struct {
	Token *apipb.Token
	// SHA-256 of the secret.
	SecretHash []byte
	// Federation invites: the name the invited site gets here, as the
	// issuer chose it; empty: the joining site's own site name.
	PeerName string
}

// NewTokenRecord is a token record in the state format, for a
// CreateToken command or a Bootstrap's management token.
func NewTokenRecord(t *apipb.Token, secretHash []byte, peerName string) *statepb.TokenRecord {
	return &statepb.TokenRecord{Token: tokenToState(t), SecretHash: secretHash, PeerName: peerName}
}

func tokenRecordToState(r *TokenRecord) *statepb.TokenRecord {
	return NewTokenRecord(r.Token, r.SecretHash, r.PeerName)
}

func tokenRecordOf(r *statepb.TokenRecord) *TokenRecord {
	return &TokenRecord{Token: tokenToAPI(r.Token), SecretHash: r.SecretHash, PeerName: r.PeerName}
}
