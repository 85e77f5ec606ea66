package storeconfig

import (
	"github.com/spf13/pflag"

	"github.com/atelier-run/atelier/pkg/cli"
)

// Flags defines the file store flags shared by the broker and the proxy
// (they must agree on where participants' files live) and returns a
// function that reads them into a Config once they are parsed. Its Layout
// is left to the caller (brokerd and proxy.Run take the data directory).
func Flags(fs *pflag.FlagSet) func() Config {
	kind := cli.String(fs, "store", "ATELIER_STORE", DefaultKind, "where participants' files live: disk (the data directory) or s3 (an S3-compatible bucket; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
	endpoint := cli.String(fs, "s3-endpoint", "ATELIER_S3_ENDPOINT", "", "S3-compatible endpoint URL (R2, MinIO; empty: AWS)")
	region := cli.String(fs, "s3-region", "ATELIER_S3_REGION", DefaultS3Region, "S3 region")
	bucket := cli.String(fs, "s3-bucket", "ATELIER_S3_BUCKET", "", "S3 bucket")
	prefix := cli.String(fs, "s3-prefix", "ATELIER_S3_PREFIX", "", "key prefix in the bucket (ending in /)")
	return func() Config {
		return Config{Kind: *kind, S3Endpoint: *endpoint, S3Region: *region, S3Bucket: *bucket, S3Prefix: *prefix}
	}
}
