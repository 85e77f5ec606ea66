// Package storeconfig picks the file store a mello binary (broker, proxy)
// runs with, from its flags: mello's disk or an S3-compatible bucket. It
// is the one place that links both backends (and the AWS SDK); code that
// only handles files takes a filestore.Store.
package storeconfig

import (
	"errors"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/filestore/s3store"
)

// Defaults of Config's empty fields.
const (
	DefaultKind     = "disk"
	DefaultS3Region = "auto"
)

// Config chooses where mello keeps participants' files: its own disk (the
// default) or an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO …) for
// deployments with several proxies or little disk.
type Config struct {
	// Kind is "disk" (default) or "s3".
	Kind string
	// Layout is the data directory of the disk store.
	Layout datalayout.Layout
	// S3Endpoint is the service URL (empty: AWS's own endpoints), e.g.
	// https://<account>.r2.cloudflarestorage.com.
	S3Endpoint string
	// S3Region (default DefaultS3Region, what R2 expects; AWS wants its
	// region).
	S3Region string
	S3Bucket string
	// S3Prefix is put before every key ("" or ending in '/').
	S3Prefix string
	// S3AccessKey and S3SecretKey; empty: AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY from the environment.
	S3AccessKey, S3SecretKey string
}

// New returns the configured store.
func New(cfg Config) (filestore.Store, error) {
	switch cfg.Kind {
	case "", DefaultKind:
		if cfg.Layout.Root == "" {
			return nil, errors.New("filestore: the disk store needs the data directory")
		}
		return diskstore.New(cfg.Layout), nil
	case "s3":
		ak, sk := cfg.S3AccessKey, cfg.S3SecretKey
		if ak == "" {
			ak, sk = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
		}
		if cfg.S3Bucket == "" || ak == "" || sk == "" {
			return nil, errors.New("filestore: the s3 store needs a bucket and credentials")
		}
		region := cfg.S3Region
		if region == "" {
			region = DefaultS3Region
		}
		opts := s3.Options{
			Region:      region,
			Credentials: credentials.NewStaticCredentialsProvider(ak, sk, ""),
			// Path-style addressing and checksums only when required are
			// what the S3-compatible services (R2, MinIO) understand.
			UsePathStyle:               cfg.S3Endpoint != "",
			RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
			ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		}
		if cfg.S3Endpoint != "" {
			opts.BaseEndpoint = aws.String(cfg.S3Endpoint)
		}
		st, err := s3store.New(s3store.Config{Client: s3.New(opts), Bucket: cfg.S3Bucket, Prefix: cfg.S3Prefix})
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	return nil, fmt.Errorf("filestore: unknown store kind %q: want disk or s3", cfg.Kind)
}
