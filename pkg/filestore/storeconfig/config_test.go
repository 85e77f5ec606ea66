package storeconfig_test

import (
	"context"
	"io"
	"net/http/httptest"
	"testing"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/filestore/storeconfig"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/stretchr/testify/require"
)

// The store a binary picks from its flags: disk by default, or a bucket
// on an S3-compatible service (here an in-process one: no S3 exists on
// this machine).
func TestNewFromConfig(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := storeconfig.New(storeconfig.Config{Layout: datalayout.New(t.TempDir())})
	require.NoError(t, err)
	require.IsType(t, &diskstore.Store{}, st)

	_, err = storeconfig.New(storeconfig.Config{Kind: "s3", S3Bucket: "b"})
	require.ErrorContains(t, err, "credentials")
	_, err = storeconfig.New(storeconfig.Config{Kind: "tape"})
	require.ErrorContains(t, err, "unknown store kind")

	backend := s3mem.New()
	require.NoError(t, backend.CreateBucket("atelier"))
	ts := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(ts.Close)
	st, err = storeconfig.New(storeconfig.Config{Kind: "s3", S3Endpoint: ts.URL, S3Region: "us-east-1", S3Bucket: "atelier",
		S3Prefix: "mello/", S3AccessKey: "k", S3SecretKey: "s"})
	require.NoError(t, err)
	ref := filestore.Ref{User: "user001", Kind: filestore.KindOutput, Subfolder: "sim", Name: "a.png"}
	w, err := st.Create(ctx, ref)
	require.NoError(t, err)
	_, err = w.Write([]byte("hello"))
	require.NoError(t, err)
	_, err = w.Commit(ctx, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
	require.NoError(t, err)
	f, err := st.Open(ctx, ref)
	require.NoError(t, err)
	defer f.Close()
	got, err := io.ReadAll(f)
	require.NoError(t, err)
	require.Equal(t, "hello", string(got))
}
