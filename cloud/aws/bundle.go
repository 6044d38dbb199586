package aws

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"time"

	sdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/straitmesh/strait/cloud"
)

// BundlePublisher writes the site's trust bundle to an S3 object on every
// change, so that peers can federate with the https_web profile from
// static hosting (S3 website, or CloudFront in front of the bucket).
// Servers need s3:PutObject on the object.
type BundlePublisher struct {
	Clients     *Clients
	Bucket, Key string
	Source      cloud.BundleSource
	Logger      *slog.Logger
	// Reassert rewrites the object this often even without a change, in
	// case it was overwritten or deleted; 10m when zero.
	Reassert time.Duration
}

// Run publishes until ctx ends.
func (p *BundlePublisher) Run(ctx context.Context) error {
	if p.Bucket == "" || p.Key == "" {
		return errors.New("bundle publishing: bucket and key are required")
	}
	reassert := p.Reassert
	if reassert == 0 {
		reassert = 10 * time.Minute
	}
	var last []byte
	lastPut := time.Time{}
	backoff := time.Second
	for {
		changed := p.Source.BundleChanged()
		wait := reassert
		doc, seq, err := p.Source.BundleJSON()
		switch {
		case err != nil:
			wait = backoff // not bootstrapped yet
		case !bytes.Equal(doc, last) || time.Since(lastPut) >= reassert:
			_, err = p.Clients.S3.PutObject(ctx, &s3.PutObjectInput{
				Bucket: sdk.String(p.Bucket), Key: sdk.String(p.Key), Body: bytes.NewReader(doc),
				ContentType: sdk.String("application/json"), CacheControl: sdk.String("max-age=60"),
			})
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				p.Logger.Warn("bundle not published to S3; retrying", "bucket", p.Bucket, "key", p.Key, "retry_in", backoff, "err", err)
				wait = backoff
				backoff = min(2*backoff, time.Minute)
				break
			}
			if !bytes.Equal(doc, last) {
				p.Logger.Info("bundle published to S3", "bucket", p.Bucket, "key", p.Key, "sequence", seq)
			}
			last, lastPut, backoff = doc, time.Now(), time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(wait):
		}
	}
}
