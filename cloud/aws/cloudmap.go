package aws

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	sdk "github.com/aws/aws-sdk-go-v2/aws"
	sd "github.com/aws/aws-sdk-go-v2/service/servicediscovery"
	sdtypes "github.com/aws/aws-sdk-go-v2/service/servicediscovery/types"

	"github.com/straitmesh/strait/cloud"
	"github.com/straitmesh/strait/meshname"
)

// Markers that keep the two directions of Cloud Map sync from feeding
// each other: what Strait imported carries SourceMeta in its metadata and
// is never published; what Strait published carries the SiteAttr
// attribute in Cloud Map and is never imported (by any site).
const (
	SourceMeta      = "source"
	SourceCloudMap  = "aws-cloudmap"
	CloudMapIDMeta  = "cloudmap-instance-id"
	SiteAttr        = "strait-site"
	NamespaceAttr   = "strait-namespace"
	ServiceAttr     = "strait-service"
	ipv4Attr        = "AWS_INSTANCE_IPV4"
	portAttr        = "AWS_INSTANCE_PORT"
	importedPort    = "tcp"
	defaultInterval = 10 * time.Second
)

// CloudMapSync keeps a Cloud Map namespace and the site's catalog in
// step. Import: every service of the namespace (as ECS registers them)
// appears in the catalog under StraitNamespace, instances following their
// Cloud Map health, and can be exported like any local service. Publish
// (optional): every passing local instance is registered in the
// namespace as service "<svc>.<ns>". Deletions propagate both ways.
// Servers need servicediscovery:List*, DiscoverInstances, GetNamespace,
// and with Publish CreateService, RegisterInstance, DeregisterInstance.
type CloudMapSync struct {
	Clients *Clients
	// Namespace is the Cloud Map namespace's name.
	Namespace string
	// StraitNamespace receives imported services; "default" when empty.
	StraitNamespace string
	// Publish registers local services into the namespace.
	Publish bool
	// Site names this site in what it publishes.
	Site    string
	Catalog cloud.Catalog
	Logger  *slog.Logger
	// Interval between polls of Cloud Map (it has no watch); 10s when zero.
	Interval time.Duration

	nsID     string
	services map[string]string // published Cloud Map service name -> ID
	warned   map[string]bool
}

// Run syncs until ctx ends: every Interval, and with Publish also at
// every catalog change.
func (c *CloudMapSync) Run(ctx context.Context) error {
	if c.Namespace == "" {
		return errors.New("cloud map sync: namespace is required")
	}
	if c.Interval == 0 {
		c.Interval = defaultInterval
	}
	for {
		var changed <-chan struct{} // nil: import alone polls
		if c.Publish {
			changed = c.Catalog.CatalogChanged()
		}
		if err := c.SyncOnce(ctx); err != nil && ctx.Err() == nil {
			c.Logger.Warn("cloud map sync failed; retrying", "namespace", c.Namespace, "retry_in", c.Interval, "err", err)
		}
		t := time.NewTimer(c.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		case <-changed:
			t.Stop()
		}
	}
}

// SyncOnce runs one round: import, then publish.
func (c *CloudMapSync) SyncOnce(ctx context.Context) error {
	if c.services == nil {
		c.services, c.warned = map[string]string{}, map[string]bool{}
	}
	if c.StraitNamespace == "" {
		c.StraitNamespace = "default"
	}
	if c.nsID == "" {
		id, err := c.namespaceID(ctx)
		if err != nil {
			return err
		}
		c.nsID = id
	}
	services, err := c.listServices(ctx)
	if err != nil {
		return err
	}
	if err := c.importServices(ctx, services); err != nil {
		return err
	}
	if c.Publish {
		return c.publish(ctx, services)
	}
	return nil
}

func (c *CloudMapSync) namespaceID(ctx context.Context) (string, error) {
	p := sd.NewListNamespacesPaginator(c.Clients.CloudMap, &sd.ListNamespacesInput{})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return "", fmt.Errorf("cloud map: list namespaces: %w", err)
		}
		for _, ns := range page.Namespaces {
			if sdk.ToString(ns.Name) == c.Namespace {
				return sdk.ToString(ns.Id), nil
			}
		}
	}
	return "", fmt.Errorf("cloud map: no namespace named %q in %s", c.Namespace, c.Clients.Region())
}

// listServices returns the namespace's services, name -> ID.
func (c *CloudMapSync) listServices(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	p := sd.NewListServicesPaginator(c.Clients.CloudMap, &sd.ListServicesInput{Filters: []sdtypes.ServiceFilter{{
		Name: sdtypes.ServiceFilterNameNamespaceId, Values: []string{c.nsID}, Condition: sdtypes.FilterConditionEq}}})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("cloud map: list services: %w", err)
		}
		for _, s := range page.Services {
			out[sdk.ToString(s.Name)] = sdk.ToString(s.Id)
		}
	}
	return out, nil
}

func key(ns, svc, id string) string { return ns + "/" + svc + "/" + id }

// importServices brings Cloud Map's instances into the catalog and
// removes those that left it.
func (c *CloudMapSync) importServices(ctx context.Context, services map[string]string) error {
	want := map[string]cloud.Instance{}
	for name := range services {
		if strings.Contains(name, ".") {
			// "<svc>.<ns>": published by a Strait site; never imported.
			continue
		}
		if err := meshname.ValidLabel(name); err != nil {
			c.warnOnce("service "+name, "cloud map service not imported: its name is not a DNS label", "service", name)
			continue
		}
		out, err := c.Clients.CloudMap.DiscoverInstances(ctx, &sd.DiscoverInstancesInput{
			NamespaceName: sdk.String(c.Namespace), ServiceName: sdk.String(name), HealthStatus: sdtypes.HealthStatusFilterAll,
			MaxResults: sdk.Int32(1000)})
		if err != nil {
			return fmt.Errorf("cloud map: discover instances of %s: %w", name, err)
		}
		for _, in := range out.Instances {
			attrs := in.Attributes
			if attrs[SiteAttr] != "" {
				continue // published by Strait
			}
			cmID := sdk.ToString(in.InstanceId)
			port, err := strconv.Atoi(attrs[portAttr])
			if attrs[ipv4Attr] == "" || err != nil || port < 1 || port > 65535 {
				c.warnOnce("instance "+name+"/"+cmID, "cloud map instance not imported: it needs AWS_INSTANCE_IPV4 and AWS_INSTANCE_PORT", "service", name, "instance", cmID)
				continue
			}
			id := CatalogInstanceID(cmID)
			want[key(c.StraitNamespace, name, id)] = cloud.Instance{Namespace: c.StraitNamespace, Service: name, ID: id,
				Address: attrs[ipv4Attr], PortName: importedPort, Port: uint32(port),
				Meta:        map[string]string{SourceMeta: SourceCloudMap, CloudMapIDMeta: cmID},
				ServiceMeta: map[string]string{SourceMeta: SourceCloudMap},
				Passing:     in.HealthStatus != sdtypes.HealthStatusUnhealthy}
		}
	}
	have := map[string]cloud.Instance{}
	for _, in := range c.Catalog.LocalInstances() {
		if in.Meta[SourceMeta] == SourceCloudMap {
			have[key(in.Namespace, in.Service, in.ID)] = in
		}
	}
	var errs []error
	for k, w := range want {
		h, ok := have[k]
		if ok && h.Address == w.Address && h.Port == w.Port && h.PortName == w.PortName && h.Passing == w.Passing {
			continue
		}
		if err := c.Catalog.RegisterInstance(ctx, w); err != nil {
			errs = append(errs, fmt.Errorf("register %s: %w", k, err))
			continue
		}
		c.Logger.Info("cloud map instance imported", "service", w.Namespace+"/"+w.Service, "instance", w.ID, "address", w.Address, "port", w.Port, "passing", w.Passing)
	}
	for k, h := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := c.Catalog.DeregisterInstance(ctx, h.Namespace, h.Service, h.ID); err != nil {
			errs = append(errs, fmt.Errorf("deregister %s: %w", k, err))
			continue
		}
		c.Logger.Info("cloud map instance gone; deregistered", "service", h.Namespace+"/"+h.Service, "instance", h.ID)
	}
	// A service deleted from Cloud Map leaves the catalog too.
	for _, svc := range c.Catalog.LocalServices() {
		if svc.Meta[SourceMeta] != SourceCloudMap || svc.Namespace != c.StraitNamespace {
			continue
		}
		if _, ok := services[svc.Name]; ok {
			continue
		}
		if err := c.Catalog.DeregisterService(ctx, svc.Namespace, svc.Name); err != nil {
			errs = append(errs, fmt.Errorf("deregister service %s/%s: %w", svc.Namespace, svc.Name, err))
			continue
		}
		c.Logger.Info("cloud map service gone; deregistered", "service", svc.Namespace+"/"+svc.Name)
	}
	return errors.Join(errs...)
}

// CatalogInstanceID maps a Cloud Map instance ID to a catalog one (a DNS
// label): itself when it is one, else a stable digest ("cm-" and 16 hex).
func CatalogInstanceID(cmID string) string {
	if meshname.ValidLabel(cmID) == nil {
		return cmID
	}
	sum := sha256.Sum256([]byte(cmID))
	return "cm-" + hex.EncodeToString(sum[:8])
}

// publish registers passing local instances (not imported ones) into the
// namespace, and deregisters what this site published that is gone.
func (c *CloudMapSync) publish(ctx context.Context, services map[string]string) error {
	want := map[string]map[string]cloud.Instance{} // Cloud Map service -> instance ID -> instance
	for _, in := range c.Catalog.LocalInstances() {
		if in.Meta[SourceMeta] == SourceCloudMap || !in.Passing || in.Port == 0 || in.Namespace == "strait" {
			continue
		}
		name := in.Service + "." + in.Namespace
		if want[name] == nil {
			want[name] = map[string]cloud.Instance{}
		}
		want[name][in.ID] = in
	}
	var errs []error
	for name, id := range services {
		if !strings.Contains(name, ".") {
			continue
		}
		c.services[name] = id
	}
	for name, insts := range want {
		id, err := c.ensureService(ctx, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		have, err := c.published(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for iid, in := range insts {
			attrs := map[string]string{ipv4Attr: in.Address, portAttr: strconv.Itoa(int(in.Port)),
				SiteAttr: c.Site, NamespaceAttr: in.Namespace, ServiceAttr: in.Service}
			if h, ok := have[iid]; ok && h[ipv4Attr] == attrs[ipv4Attr] && h[portAttr] == attrs[portAttr] {
				continue
			}
			if _, err := c.Clients.CloudMap.RegisterInstance(ctx, &sd.RegisterInstanceInput{
				ServiceId: sdk.String(id), InstanceId: sdk.String(iid), Attributes: attrs}); err != nil {
				errs = append(errs, fmt.Errorf("cloud map: register %s/%s: %w", name, iid, err))
				continue
			}
			c.Logger.Info("instance published to cloud map", "service", name, "instance", iid)
		}
	}
	// Deregister what this site published that is no longer wanted.
	for name, id := range c.services {
		have, err := c.published(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for iid := range have {
			if _, ok := want[name][iid]; ok {
				continue
			}
			if _, err := c.Clients.CloudMap.DeregisterInstance(ctx, &sd.DeregisterInstanceInput{ServiceId: sdk.String(id), InstanceId: sdk.String(iid)}); err != nil {
				errs = append(errs, fmt.Errorf("cloud map: deregister %s/%s: %w", name, iid, err))
				continue
			}
			c.Logger.Info("instance withdrawn from cloud map", "service", name, "instance", iid)
		}
	}
	return errors.Join(errs...)
}

// ensureService returns the ID of the namespace's service name, creating it.
func (c *CloudMapSync) ensureService(ctx context.Context, name string) (string, error) {
	if id, ok := c.services[name]; ok {
		return id, nil
	}
	out, err := c.Clients.CloudMap.CreateService(ctx, &sd.CreateServiceInput{Name: sdk.String(name), NamespaceId: sdk.String(c.nsID),
		Description: sdk.String("published by Strait site " + c.Site)})
	if err != nil {
		return "", fmt.Errorf("cloud map: create service %s: %w", name, err)
	}
	id := sdk.ToString(out.Service.Id)
	c.services[name] = id
	return id, nil
}

// published lists the instances of a service that this site registered,
// instance ID -> attributes.
func (c *CloudMapSync) published(ctx context.Context, serviceID string) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	p := sd.NewListInstancesPaginator(c.Clients.CloudMap, &sd.ListInstancesInput{ServiceId: sdk.String(serviceID)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("cloud map: list instances: %w", err)
		}
		for _, in := range page.Instances {
			if in.Attributes[SiteAttr] == c.Site {
				out[sdk.ToString(in.Id)] = in.Attributes
			}
		}
	}
	return out, nil
}

func (c *CloudMapSync) warnOnce(k, msg string, args ...any) {
	if c.warned[k] {
		return
	}
	c.warned[k] = true
	c.Logger.Warn(msg, args...)
}
