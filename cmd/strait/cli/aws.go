package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/straitmesh/strait/cloud/aws"
	"github.com/straitmesh/strait/controlplane"
)

// integrate adds the configured AWS integrations to a server's config:
// the KMS key service for the KEK, and leader tasks for bundle publishing
// and Cloud Map sync.
func (a *AWSConfig) integrate(ctx context.Context, cfg *controlplane.Config, site string) error {
	if !a.used() {
		return nil
	}
	clients, err := aws.New(ctx, a.sdkConfig())
	if err != nil {
		return err
	}
	if a.KMSKeyID != "" {
		if cfg.KeyService, err = aws.NewKMS(clients, a.KMSKeyID); err != nil {
			return err
		}
		cfg.KeyServiceName = aws.KMSService
	}
	if a.BundleBucket != "" {
		bucket, key := a.BundleBucket, a.BundleKey
		cfg.LeaderTasks = append(cfg.LeaderTasks, controlplane.LeaderTask{Name: "aws-bundle-s3", Run: func(ctx context.Context, s *controlplane.CloudSite) error {
			if key == "" {
				key = s.TrustDomain().Name() + "/bundle.json"
			}
			p := &aws.BundlePublisher{Clients: clients, Bucket: bucket, Key: key, Source: s, Logger: cfg.Logger}
			return p.Run(ctx)
		}})
	}
	if cm := a.CloudMap; cm.Namespace != "" {
		cfg.LeaderTasks = append(cfg.LeaderTasks, controlplane.LeaderTask{Name: "aws-cloudmap", Run: func(ctx context.Context, s *controlplane.CloudSite) error {
			sync := &aws.CloudMapSync{Clients: clients, Namespace: cm.Namespace, StraitNamespace: cm.StraitNamespace, Publish: cm.Publish,
				Site: s.Site(), Catalog: s, Interval: time.Duration(cm.Interval), Logger: cfg.Logger}
			return sync.Run(ctx)
		}})
	}
	cfg.Logger.Info("aws integrations", "region", clients.Region(), "kms", a.KMSKeyID != "", "bundle_s3", a.BundleBucket != "", "cloudmap", a.CloudMap.Namespace)
	return nil
}

// resolveServers turns --server entries (addresses or discovery specs)
// into addresses, retrying until discovery finds at least one.
func resolveServers(ctx context.Context, entries []string, base aws.Config, log func(string, ...any)) ([]string, error) {
	discover := false
	for _, e := range entries {
		discover = discover || aws.IsDiscovery(e)
	}
	if !discover {
		return entries, nil
	}
	if err := aws.ValidateJoin(entries); err != nil {
		return nil, err
	}
	backoff := time.Second
	for {
		addrs, err := aws.ResolveAddrs(ctx, entries, base)
		if err == nil && len(addrs) > 0 {
			return addrs, nil
		}
		if err == nil {
			err = fmt.Errorf("no server found")
		}
		log("discovering servers; retrying", "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}
