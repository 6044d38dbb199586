package state

import (
	"fmt"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// The catalog's writes: local services and instances (register,
// deregister, health), and removing a service with its instances, local or
// imported.

func (t *tx) applyRegister(req *apipb.RegisterRequest) error {
	k := ServiceKey{"", req.Service.GetNamespace(), req.Service.GetName()}
	if err := t.checkPortsInUse(k, req); err != nil {
		return err
	}
	t.putService(k, req.Service)
	if req.Instance == nil {
		return nil
	}
	in := req.Instance
	in.Namespace, in.Service = k.Namespace, k.Name
	if in.Health == apipb.Health_HEALTH_UNSPECIFIED {
		in.Health = apipb.Health_HEALTH_PASSING
	}
	t.putInstance(t.s.instances[k], in)
	return nil
}

// putInstance stores a new version of an instance (a copy the caller owns)
// unless nothing changed.
func (t *tx) putInstance(byID map[string]*apipb.Instance, in *apipb.Instance) {
	if prev, ok := byID[in.Id]; ok {
		in.CreateIndex, in.ModifyIndex = prev.CreateIndex, prev.ModifyIndex
		if proto.Equal(prev, in) {
			return
		}
	} else {
		in.CreateIndex = t.index
		t.s.nInst++
	}
	in.ModifyIndex = t.index
	byID[in.Id] = in
	t.ch.instance(in)
}

// putService stores a new version of a service definition (a copy the
// caller owns) unless nothing changed.
func (t *tx) putService(k ServiceKey, svc *apipb.Service) {
	if old, ok := t.s.services[k]; ok {
		svc.CreateIndex, svc.ModifyIndex = old.CreateIndex, old.ModifyIndex
		if proto.Equal(old, svc) {
			return
		}
		svc.ModifyIndex = t.index
	} else {
		svc.CreateIndex, svc.ModifyIndex = t.index, t.index
		t.s.instances[k] = make(map[string]*apipb.Instance)
	}
	t.s.services[k] = svc
	t.ch.service(svc)
}

// checkPortsInUse rejects a service definition that drops a port its
// instances (other than the one being replaced) still use, and an instance
// naming a port the service does not define. Instances are scanned only
// when the definition drops a port, so registering into a large service
// stays O(1).
func (t *tx) checkPortsInUse(k ServiceKey, req *apipb.RegisterRequest) error {
	defined := make(map[string]bool, len(req.Service.GetPorts()))
	for _, p := range req.Service.GetPorts() {
		defined[p.Name] = true
	}
	for name := range req.Instance.GetPorts() {
		if !defined[name] {
			return fmt.Errorf("instance.ports: port %q is not defined by service %s/%s: %w", name, k.Namespace, k.Name, ErrConflict)
		}
	}
	old := t.s.services[k]
	dropped := false
	for _, p := range old.GetPorts() {
		if !defined[p.Name] {
			dropped = true
			break
		}
	}
	if !dropped {
		return nil
	}
	for id, in := range t.s.instances[k] {
		if req.Instance != nil && id == req.Instance.Id {
			continue
		}
		for name := range in.Ports {
			if !defined[name] {
				return fmt.Errorf("service.ports: port %q is used by instance %s; deregister it or keep the port: %w", name, id, ErrConflict)
			}
		}
	}
	return nil
}

func (t *tx) applyDeregister(req *apipb.DeregisterRequest) error {
	k := ServiceKey{"", req.Namespace, req.Service}
	byID, ok := t.s.instances[k]
	if !ok {
		return fmt.Errorf("service %s/%s: %w", k.Namespace, k.Name, ErrNotFound)
	}
	if req.InstanceId != "" {
		in, ok := byID[req.InstanceId]
		if !ok {
			return fmt.Errorf("instance %s of %s/%s: %w", req.InstanceId, k.Namespace, k.Name, ErrNotFound)
		}
		delete(byID, req.InstanceId)
		t.s.nInst--
		t.ch.instanceDeleted(in)
		return nil
	}
	t.deleteService(k)
	return nil
}

func (t *tx) applySetHealth(req *statepb.SetHealth) {
	health := apipb.Health(req.Health)
	for _, k := range req.Instances {
		byID := t.s.instances[ServiceKey{"", k.Namespace, k.Service}]
		in, ok := byID[k.Id]
		if !ok || in.Health == health {
			continue // deregistered or already there since the proposal
		}
		in = proto.Clone(in).(*apipb.Instance)
		in.Health = health
		in.ModifyIndex = t.index
		byID[k.Id] = in
		t.ch.instance(in)
	}
}

// deleteService removes a service and its instances.
func (t *tx) deleteService(k ServiceKey) {
	byID := t.s.instances[k]
	ids := make([]string, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		t.ch.instanceDeleted(byID[id])
	}
	t.s.nInst -= len(byID)
	if k.Peer != "" {
		u, svc := t.s.quota.usage(k.Peer), t.s.services[k]
		u.Services--
		u.Instances -= len(byID)
		u.Bytes -= serviceSize(svc)
		for _, in := range byID {
			u.Bytes -= instanceSize(in)
		}
		if svc.GetVirtualIp() == "" {
			u.WithoutVIP--
		}
	}
	t.releaseVIP(t.s.services[k])
	delete(t.s.instances, k)
	delete(t.s.services, k)
	t.ch.serviceDeleted(k)
}
