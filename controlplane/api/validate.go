package api

import (
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
)

// Limits on request contents.
const (
	MaxRequestBytes = 1 << 20
	MaxPorts        = 32
	MaxMeta         = 64
	MaxMetaKey      = 128
	MaxMetaValue    = 512
	MinTTL          = time.Second
	MaxTTL          = 24 * time.Hour
	MaxDescription  = 256
)

func validLabel(field, s string) error {
	if err := meshname.ValidLabel(s); err != nil {
		return fieldErr(field, "%v", err)
	}
	return nil
}

// normalizeNamespace fills the default namespace.
func normalizeNamespace(ns *string) {
	if *ns == "" {
		*ns = meshname.DefaultNamespace
	}
}

func validateMeta(field string, m map[string]string) error {
	if len(m) > MaxMeta {
		return fieldErr(field, "has %d entries; at most %d are allowed", len(m), MaxMeta)
	}
	for k, v := range m {
		if k == "" || len(k) > MaxMetaKey {
			return fieldErr(field, "key %q must be 1 to %d bytes", k, MaxMetaKey)
		}
		if len(v) > MaxMetaValue {
			return fieldErr(field+"["+k+"]", "value is %d bytes; at most %d are allowed", len(v), MaxMetaValue)
		}
	}
	return nil
}

// validateRegister checks a RegisterRequest and fills defaults (namespace).
func validateRegister(req *apipb.RegisterRequest) error {
	svc := req.GetService()
	if svc == nil {
		return fieldErr("service", "is required")
	}
	normalizeNamespace(&svc.Namespace)
	if err := validLabel("service.namespace", svc.Namespace); err != nil {
		return err
	}
	if err := validLabel("service.name", svc.Name); err != nil {
		return err
	}
	if len(svc.Ports) > MaxPorts {
		return fieldErr("service.ports", "has %d ports; at most %d are allowed", len(svc.Ports), MaxPorts)
	}
	seen := make(map[string]bool, len(svc.Ports))
	for i, p := range svc.Ports {
		f := "service.ports[" + strconv.Itoa(i) + "]"
		if err := validLabel(f+".name", p.Name); err != nil {
			return err
		}
		if seen[p.Name] {
			return fieldErr(f+".name", "port %q is defined twice", p.Name)
		}
		seen[p.Name] = true
		if p.Protocol == apipb.Protocol_PROTOCOL_UNSPECIFIED {
			p.Protocol = apipb.Protocol_PROTOCOL_TCP
		}
		if _, ok := apipb.Protocol_name[int32(p.Protocol)]; !ok {
			return fieldErr(f+".protocol", "unknown protocol %d (want tcp, http or grpc)", p.Protocol)
		}
	}
	if err := validateMeta("service.meta", svc.Meta); err != nil {
		return err
	}
	if svc.CreateIndex != 0 || svc.ModifyIndex != 0 {
		return fieldErr("service.create_index", "indexes are set by the server; leave them zero")
	}
	if svc.Peer != "" {
		return fieldErr("service.peer", "is set by replication only; register local services")
	}
	if svc.VirtualIp != "" {
		return fieldErr("service.virtual_ip", "is allocated by the server for imported services; leave it empty")
	}
	in := req.GetInstance()
	if in == nil {
		return nil
	}
	if in.Namespace == "" {
		in.Namespace = svc.Namespace
	}
	if in.Service == "" {
		in.Service = svc.Name
	}
	if in.Namespace != svc.Namespace || in.Service != svc.Name {
		return fieldErr("instance.service", "instance names %s/%s but the service is %s/%s", in.Namespace, in.Service, svc.Namespace, svc.Name)
	}
	return validateInstance(in, seen)
}

// validateInstance checks an instance; with defined set, its ports must be
// among them.
func validateInstance(in *apipb.Instance, defined map[string]bool) error {
	if err := validLabel("instance.id", in.Id); err != nil {
		return err
	}
	if err := validateAddress("instance.address", in.Address); err != nil {
		return err
	}
	for name, port := range in.Ports {
		if defined != nil && !defined[name] {
			return fieldErr("instance.ports["+name+"]", "the service defines no port %q", name)
		}
		if port == 0 || port > 65535 {
			return fieldErr("instance.ports["+name+"]", "port %d is outside 1-65535", port)
		}
	}
	if err := validateMeta("instance.meta", in.Meta); err != nil {
		return err
	}
	if in.Zone != "" {
		if err := validLabel("instance.zone", in.Zone); err != nil {
			return err
		}
	}
	if _, ok := apipb.Health_name[int32(in.Health)]; !ok {
		return fieldErr("instance.health", "unknown health %d", in.Health)
	}
	if in.Ttl != nil {
		if err := in.Ttl.CheckValid(); err != nil {
			return fieldErr("instance.ttl", "%v", err)
		}
		if d := in.Ttl.AsDuration(); d < MinTTL || d > MaxTTL {
			return fieldErr("instance.ttl", "%s is outside %s to %s", d, MinTTL, MaxTTL)
		}
	}
	if in.CreateIndex != 0 || in.ModifyIndex != 0 {
		return fieldErr("instance.create_index", "indexes are set by the server; leave them zero")
	}
	if in.Peer != "" {
		return fieldErr("instance.peer", "is set by replication only; register local instances")
	}
	return nil
}

// ValidateImportedChange checks one change a peer's replication stream
// delivered: the same rules as a local registration, and no peer field
// (the importer sets it).
func ValidateImportedChange(c *apipb.Change) error {
	switch x := c.GetChange().(type) {
	case *apipb.Change_Service:
		if x.Service.Namespace == "" {
			return fieldErr("service.namespace", "is required")
		}
		return validateRegister(&apipb.RegisterRequest{Service: x.Service})
	case *apipb.Change_Instance:
		in := x.Instance
		if err := validLabel("instance.namespace", in.Namespace); err != nil {
			return err
		}
		if err := validLabel("instance.service", in.Service); err != nil {
			return err
		}
		return validateInstance(in, nil)
	case *apipb.Change_ServiceDeleted:
		if x.ServiceDeleted.Peer != "" {
			return fieldErr("service_deleted.peer", "must be empty")
		}
		if err := validLabel("service_deleted.namespace", x.ServiceDeleted.Namespace); err != nil {
			return err
		}
		return validLabel("service_deleted.name", x.ServiceDeleted.Name)
	case *apipb.Change_InstanceDeleted:
		k := x.InstanceDeleted
		if k.Peer != "" {
			return fieldErr("instance_deleted.peer", "must be empty")
		}
		for _, f := range [][2]string{{"namespace", k.Namespace}, {"service", k.Service}, {"id", k.Id}} {
			if err := validLabel("instance_deleted."+f[0], f[1]); err != nil {
				return err
			}
		}
		return nil
	}
	return fieldErr("change", "is empty")
}

func validateAddress(field, s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fieldErr(field, "%q is not an IP address", s)
	}
	if a.Zone() != "" {
		return fieldErr(field, "%q has an IPv6 zone; use a global or unique-local address", s)
	}
	if a.IsUnspecified() || a.IsMulticast() {
		return fieldErr(field, "%q is not a unicast address", s)
	}
	return nil
}

func validateHostPort(field, s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fieldErr(field, "%q is not host:port", s)
	}
	if err := validateAddress(field, host); err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fieldErr(field, "port %q is outside 1-65535", port)
	}
	return nil
}

func validateServiceRef(ns *string, name string) error {
	normalizeNamespace(ns)
	if err := validLabel("namespace", *ns); err != nil {
		return err
	}
	return validLabel("service", name)
}

// ValidateRegister checks a registration as the API would (and fills in
// the default namespace), for writers inside the server such as cloud
// catalog sync.
func ValidateRegister(req *apipb.RegisterRequest) error { return validateRegister(req) }
