package filetransfer_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/s3store"
	"github.com/atelier-run/atelier/pkg/filetransfer"
	"github.com/atelier-run/atelier/pkg/filetransfer/transfertest"
	"github.com/atelier-run/atelier/pkg/retention"
)

// TestReceiveIntoS3 puts the Receiver in front of an S3 bucket (an
// in-process S3 server, gofakes3: no S3 service is reachable from the test
// machines) instead of mello's disk: the staged upload is streamed into a
// multipart upload, the sum is verified, and the file is read back, walked
// and counted like on disk.
func TestReceiveIntoS3(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	backend := s3mem.New()
	require.NoError(t, backend.CreateBucket("atelier"))
	ts := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(ts.Close)
	store, err := s3store.New(s3store.Config{Bucket: "atelier", PartSize: s3store.MinPartSize, Client: s3.New(s3.Options{
		BaseEndpoint: aws.String(ts.URL), Region: "us-east-1", UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider("test", "test", ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})})
	require.NoError(t, err)

	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
	require.NoError(t, err)
	go s.Start()
	require.True(t, s.ReadyForConnections(testutil.WaitTimeout()))
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	r, err := filetransfer.NewReceiver(filetransfer.ReceiverConfig{Conn: nc, Store: store, StagingDir: filepath.Join(t.TempDir(), "staging")})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })

	const size = 23<<20 + 11
	p := transfertest.NewPattern(3, size)
	sum := p.SHA256()
	ref := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Subfolder: "video", Name: "clip.mp4"}
	got, err := filetransfer.Send(ctx, nc, filetransfer.DefaultPutPrefix, "gpu-1",
		filetransfer.Meta{TransferID: filetransfer.TransferID("s3"), Ref: ref, Size: size, SHA256: sum}, p)
	require.NoError(t, err)
	require.Equal(t, ref, got)

	f, err := store.Open(ctx, ref)
	require.NoError(t, err)
	defer f.Close()
	require.Equal(t, sum, f.Info().SHA256)
	h := sha256.New()
	n, err := io.Copy(h, f)
	require.NoError(t, err)
	require.Equal(t, int64(size), n)
	require.Equal(t, sum, hex.EncodeToString(h.Sum(nil)))

	use, err := retention.UsageOf(ctx, store, "user007")
	require.NoError(t, err)
	require.Equal(t, int64(size), use.Kinds[filestore.KindOutput].Bytes)
}
