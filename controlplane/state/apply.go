package state

import (
	"fmt"
	"time"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// ApplyCommand applies one command at index. On error the state is
// unchanged. The result is the command's output (see each case). The
// store may keep parts of cmd (maps, timestamps): the caller must not
// modify it afterwards.
func (s *Store) ApplyCommand(index uint64, cmd *statepb.Command) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyLocked(index, cmd)
}

func (s *Store) applyLocked(index uint64, cmd *statepb.Command) (any, error) {
	if s.halted != nil {
		return nil, s.halted
	}
	if f := cmd.GetFormat(); f > CommandFormat {
		s.halted = fmt.Errorf("command at index %d is in format %d; this server understands formats up to %d, so it stops applying the log: upgrade it, and it resumes from its last snapshot: %w",
			index, f, CommandFormat, ErrFormat)
		return nil, s.halted
	}
	if index > s.index {
		s.index = index
	}
	if err := wellFormed(cmd); err != nil {
		return nil, err
	}
	t := &tx{s: s, index: index, now: cmd.GetTime().AsTime()}
	out, err := t.apply(cmd)
	if len(t.ch) > 0 {
		s.events.publish(&apipb.WatchEvent{Index: index, Changes: t.ch})
	}
	return out, err
}

// tx applies one command to the store, under its write lock: it holds the
// command's index and time (the proposer's clock), and collects the
// catalog changes the command makes, for the watch.
type tx struct {
	s     *Store
	index uint64
	now   time.Time
	ch    changes
}

// apply dispatches a well-formed command.
func (t *tx) apply(cmd *statepb.Command) (any, error) {
	switch c := cmd.Cmd.(type) {
	case *statepb.Command_Bootstrap:
		return nil, t.applyBootstrap(c.Bootstrap, cmd.GetTime())
	case *statepb.Command_Register:
		return nil, t.applyRegister(registerToAPI(c.Register))
	case *statepb.Command_Deregister:
		return nil, t.applyDeregister(deregisterToAPI(c.Deregister))
	case *statepb.Command_SetHealth:
		t.applySetHealth(c.SetHealth)
	case *statepb.Command_CreateToken:
		return nil, t.applyCreateToken(tokenRecordOf(c.CreateToken))
	case *statepb.Command_RevokeToken:
		return nil, t.applyRevokeToken(c.RevokeToken)
	case *statepb.Command_ConsumeToken:
		return t.applyConsumeToken(c.ConsumeToken)
	case *statepb.Command_CreateEntry:
		return nil, t.applyCreateEntry(entryToAPI(c.CreateEntry))
	case *statepb.Command_DeleteEntry:
		return nil, t.applyDeleteEntry(c.DeleteEntry)
	case *statepb.Command_AddJwtKey:
		return nil, t.applyAddJWTKey(c.AddJwtKey)
	case *statepb.Command_SetExport:
		t.applySetExport(exportToAPI(c.SetExport))
	case *statepb.Command_ImportBatch:
		return nil, t.applyImport(importBatchOf(c.ImportBatch))
	case *statepb.Command_SetIntention:
		t.applySetIntention(intentionToAPI(c.SetIntention))
	case *statepb.Command_DeleteIntention:
		return nil, t.applyDeleteIntention(c.DeleteIntention)
	case *statepb.Command_SetGateway:
		t.applySetGateway(gatewayToAPI(c.SetGateway))
	case *statepb.Command_SetAgent:
		t.applySetAgent(agentToAPI(c.SetAgent))
	case *statepb.Command_SetForeignBundle:
		return nil, t.applySetForeign(c.SetForeignBundle)
	case *statepb.Command_AddPeer:
		return nil, t.applyAddPeer(c.AddPeer)
	case *statepb.Command_DeleteForeignBundle:
		return nil, t.applyDeleteForeign(c.DeleteForeignBundle)
	case *statepb.Command_PrepareRoot:
		return nil, t.applyPrepareRoot(c.PrepareRoot)
	case *statepb.Command_ActivateRoot:
		return nil, t.applyActivateRoot(c.ActivateRoot)
	case *statepb.Command_DropRoot:
		return nil, t.applyDropRoot(c.DropRoot)
	default:
		return nil, fmt.Errorf("unknown command %T", cmd.Cmd)
	}
	return nil, nil
}

// wellFormed checks the structure apply relies on; it never looks at the
// state, so every replica reaches the same verdict.
func wellFormed(cmd *statepb.Command) error {
	bad := func(what string) error { return fmt.Errorf("%s: %w", what, ErrMalformed) }
	switch c := cmd.Cmd.(type) {
	case *statepb.Command_Bootstrap:
		if c.Bootstrap.GetRoot() == nil || c.Bootstrap.Site == "" || c.Bootstrap.TrustDomain == "" {
			return bad("bootstrap without site, trust domain or root")
		}
		if mt := c.Bootstrap.ManagementToken; mt != nil && (mt.Token.GetAccessorId() == "" || len(mt.SecretHash) != 32) {
			return bad("bootstrap with a malformed management token")
		}
	case *statepb.Command_Register:
		r := c.Register
		if r.GetService().GetName() == "" || r.Service.Namespace == "" {
			return bad("register without a service name and namespace")
		}
		if r.Instance != nil && r.Instance.Id == "" {
			return bad("register with an instance without an id")
		}
		if r.Service.Peer != "" || r.Instance.GetPeer() != "" {
			return bad("register of an imported service (only replication writes those)")
		}
	case *statepb.Command_Deregister:
		if c.Deregister.GetService() == "" {
			return bad("deregister without a service")
		}
	case *statepb.Command_SetHealth:
		for _, k := range c.SetHealth.GetInstances() {
			if k == nil || k.Peer != "" {
				return bad("set health with an empty key or an imported instance")
			}
		}
	case *statepb.Command_CreateToken:
		if c.CreateToken.GetToken().GetAccessorId() == "" || len(c.CreateToken.SecretHash) != 32 {
			return bad("token without accessor or 32-byte hash")
		}
	case *statepb.Command_CreateEntry:
		e := c.CreateEntry
		if e.Id == "" || e.Namespace == "" || e.Service == "" || e.Agent == "" || len(e.Selectors) == 0 {
			return bad("workload entry without id, namespace, service, agent or selectors")
		}
		for _, sel := range e.Selectors {
			if sel == nil {
				return bad("workload entry with an empty selector")
			}
		}
	case *statepb.Command_AddJwtKey:
		k := c.AddJwtKey
		if k.Kid == "" || len(k.PublicKey) == 0 || len(k.SealedKey) == 0 {
			return bad("jwt key without kid, public key or sealed key")
		}
	case *statepb.Command_SetAgent:
		if c.SetAgent.Node == "" {
			return bad("agent without a node name")
		}
	case *statepb.Command_SetExport:
		if c.SetExport.Namespace == "" || c.SetExport.Service == "" {
			return bad("export without namespace or service")
		}
	case *statepb.Command_SetForeignBundle:
		if c.SetForeignBundle.TrustDomain == "" || len(c.SetForeignBundle.Bundle) == 0 {
			return bad("foreign bundle without trust domain or bundle")
		}
	case *statepb.Command_DeleteForeignBundle:
		if c.DeleteForeignBundle.TrustDomain == "" {
			return bad("delete foreign bundle without trust domain")
		}
	case *statepb.Command_AddPeer:
		p := c.AddPeer.GetPeer()
		if p.GetTrustDomain() == "" || len(p.Bundle) == 0 || p.PeerName == "" {
			return bad("add peer without trust domain, bundle or peer name")
		}
		if h := c.AddPeer.InviteSecretHash; len(h) != 0 && len(h) != 32 {
			return bad("add peer with a malformed invite hash")
		}
	case *statepb.Command_ImportBatch:
		return wellFormedImport(c.ImportBatch)
	case *statepb.Command_SetIntention:
		in := c.SetIntention
		if in.Source == "" || in.Destination == "" || in.Action == statepb.IntentionAction_INTENTION_ACTION_UNSPECIFIED {
			return bad("intention without source, destination or action")
		}
	case *statepb.Command_DeleteIntention:
		if c.DeleteIntention.Source == "" || c.DeleteIntention.Destination == "" {
			return bad("delete intention without source or destination")
		}
	case *statepb.Command_SetGateway:
		if c.SetGateway.Name == "" {
			return bad("gateway without a name")
		}
	case *statepb.Command_PrepareRoot:
		if len(c.PrepareRoot.Certificate) == 0 || len(c.PrepareRoot.SealedKey) == 0 {
			return bad("prepare root without certificate or key")
		}
	case *statepb.Command_ActivateRoot:
		if len(c.ActivateRoot.Certificate) == 0 || c.ActivateRoot.DropAfter == nil {
			return bad("activate root without certificate or drop time")
		}
	case *statepb.Command_DropRoot:
		if len(c.DropRoot.Certificate) == 0 {
			return bad("drop root without certificate")
		}
	case *statepb.Command_RevokeToken, *statepb.Command_ConsumeToken, *statepb.Command_DeleteEntry:
	case nil:
		return bad("empty command")
	}
	return nil
}

type changes []*apipb.Change

func (c *changes) service(v *apipb.Service) {
	*c = append(*c, &apipb.Change{Change: &apipb.Change_Service{Service: v}})
}
func (c *changes) instance(v *apipb.Instance) {
	*c = append(*c, &apipb.Change{Change: &apipb.Change_Instance{Instance: v}})
}
func (c *changes) serviceDeleted(k ServiceKey) {
	*c = append(*c, &apipb.Change{Change: &apipb.Change_ServiceDeleted{ServiceDeleted: &apipb.ServiceKey{Namespace: k.Namespace, Name: k.Name, Peer: k.Peer}}})
}
func (c *changes) instanceDeleted(in *apipb.Instance) {
	*c = append(*c, &apipb.Change{Change: &apipb.Change_InstanceDeleted{InstanceDeleted: &apipb.InstanceKey{Namespace: in.Namespace, Service: in.Service, Id: in.Id, Peer: in.Peer}}})
}
