// Package s3store is the file store in an S3-compatible bucket (AWS S3,
// SeaweedFS, MinIO …) through aws-sdk-go-v2: one object per file under the
// participant's prefix, its verified sha256 kept in the object metadata.
package s3store
