// Package aws is Strait's integration with AWS, on aws-sdk-go-v2: server
// and gateway discovery from EC2 tags (retry_join), a KMS key wrapping the
// site CA's key-encryption key, Cloud Map catalog sync, and trust bundle
// publishing to S3.
//
// Credentials come from the SDK's standard chain (environment, shared
// config and credentials files, web identity, the instance role), and the
// region from Config or that chain. Each service's endpoint can be
// overridden, for private endpoints (VPC interface endpoints) and for
// tests against an emulator.
package aws

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"

	sdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/servicediscovery"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// The services Strait calls, as named in endpoint overrides.
const (
	ServiceEC2      = "ec2"
	ServiceKMS      = "kms"
	ServiceS3       = "s3"
	ServiceCloudMap = "servicediscovery"
)

var services = []string{ServiceEC2, ServiceKMS, ServiceS3, ServiceCloudMap}

// Config selects the region, the credentials profile and endpoints.
type Config struct {
	// Region, e.g. "us-east-1"; from the environment or shared config
	// when empty.
	Region string `yaml:"region"`
	// Profile of the shared config files; the default chain when empty.
	Profile string `yaml:"profile"`
	// Endpoints override a service's endpoint URL, by service name (ec2,
	// kms, s3, servicediscovery), or all of them with the key "*".
	Endpoints map[string]string `yaml:"endpoints"`
}

// Validate checks the endpoint overrides.
func (c Config) Validate() error {
	for svc, u := range c.Endpoints {
		if svc != "*" && !known(svc) {
			return fmt.Errorf("aws endpoints: unknown service %q (want one of %s, or \"*\")", svc, strings.Join(services, ", "))
		}
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			return fmt.Errorf("aws endpoints: %s: %q is not an http(s) URL", svc, u)
		}
	}
	return nil
}

func known(svc string) bool {
	for _, s := range services {
		if s == svc {
			return true
		}
	}
	return false
}

// endpoint is the override for svc, if any.
func (c Config) endpoint(svc string) *string {
	if u, ok := c.Endpoints[svc]; ok {
		return sdk.String(u)
	}
	if u, ok := c.Endpoints["*"]; ok {
		return sdk.String(u)
	}
	return nil
}

// Clients are the service clients built from one Config.
type Clients struct {
	cfg      Config
	aws      sdk.Config
	EC2      *ec2.Client
	KMS      *kms.Client
	S3       *s3.Client
	CloudMap *servicediscovery.Client
}

// New resolves credentials and region and builds the clients. It makes
// no call: a missing credential surfaces on the first request, with the
// SDK's explanation.
func New(ctx context.Context, c Config, opts ...func(*config.LoadOptions) error) (*Clients, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Region != "" {
		opts = append(opts, config.WithRegion(c.Region))
	}
	if c.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(c.Profile))
	}
	ac, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws: load configuration: %w", err)
	}
	if ac.Region == "" {
		return nil, errors.New("aws: no region: set region (or AWS_REGION)")
	}
	cl := &Clients{cfg: c, aws: ac}
	cl.EC2 = ec2.NewFromConfig(ac, func(o *ec2.Options) { o.BaseEndpoint = c.endpoint(ServiceEC2) })
	cl.KMS = kms.NewFromConfig(ac, func(o *kms.Options) { o.BaseEndpoint = c.endpoint(ServiceKMS) })
	cl.S3 = s3.NewFromConfig(ac, func(o *s3.Options) {
		o.BaseEndpoint = c.endpoint(ServiceS3)
		// Path-style addressing with an overridden endpoint: a private
		// endpoint or an emulator serves no bucket subdomains.
		o.UsePathStyle = o.BaseEndpoint != nil
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	cl.CloudMap = servicediscovery.NewFromConfig(ac, func(o *servicediscovery.Options) {
		o.BaseEndpoint = c.endpoint(ServiceCloudMap)
		if o.BaseEndpoint != nil {
			// DiscoverInstances goes to "data-<endpoint>" by default: an
			// overridden endpoint (a private one, an emulator) serves both.
			o.APIOptions = append(o.APIOptions, noHostPrefix)
		}
	})
	return cl, nil
}

// noHostPrefix turns off the SDK's endpoint host prefixes.
func noHostPrefix(stack *middleware.Stack) error {
	return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("StraitNoEndpointHostPrefix",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			return next.HandleInitialize(smithyhttp.DisableEndpointHostPrefix(ctx, true), in)
		}), middleware.Before)
}

// Region is the resolved region.
func (c *Clients) Region() string { return c.aws.Region }

// parseKV parses "k=v k2=v2" (go-discover's format), refusing unknown or
// repeated keys.
func parseKV(s string, allowed ...string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("%q: want key=value", f)
		}
		ok = false
		for _, a := range allowed {
			ok = ok || a == k
		}
		if !ok {
			sort.Strings(allowed)
			return nil, fmt.Errorf("unknown key %q (known: %s)", k, strings.Join(allowed, ", "))
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("key %q given twice", k)
		}
		out[k] = v
	}
	return out, nil
}
