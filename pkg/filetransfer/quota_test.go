package filetransfer_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/filetransfer"
	"github.com/atelier-run/atelier/pkg/retention"
)

// TestQuotaRefusesUpload wires retention.Quotas into the Receiver as the
// broker should: an output that would take the participant over their quota
// is refused on open with a message for the participant, not retried, and
// nothing is staged; stored files count at once.
func TestQuotaRefusesUpload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
	require.NoError(t, err)
	go s.Start()
	require.True(t, s.ReadyForConnections(testutil.WaitTimeout()))
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)

	layout := datalayout.New(filepath.Join(t.TempDir(), "data"))
	require.NoError(t, layout.Ensure())
	store := diskstore.New(layout)
	quotas, err := retention.NewQuotas(retention.QuotaConfig{Store: store, DefaultLimit: 1 << 20})
	require.NoError(t, err)
	var stored atomic.Int64
	r, err := filetransfer.NewReceiver(filetransfer.ReceiverConfig{
		Conn: nc, Store: store, StagingDir: filepath.Join(layout.Root, "staging"),
		Admit: func(_ string, ref filestore.Ref, size int64) error {
			return quotas.Check(context.Background(), ref.User, size)
		},
		Stored: func(_ string, info filestore.Info) {
			quotas.Added(info.Ref.User, info.Size)
			stored.Add(1)
		},
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })

	var sendAs func(id, name string, n int) (filetransfer.Stats, error)
	send := func(name string, n int) (filetransfer.Stats, error) { return sendAs(name, name, n) }
	sendAs = func(id, name string, n int) (filetransfer.Stats, error) {
		data := bytes.Repeat([]byte{byte(n)}, n)
		sum := sha256.Sum256(data)
		var st filetransfer.Stats
		_, err := filetransfer.Send(ctx, nc, filetransfer.DefaultPutPrefix, "gpu-1", filetransfer.Meta{
			TransferID: filetransfer.TransferID(id), Ref: filestore.Ref{User: "user001", Kind: filestore.KindOutput, Name: name},
			Size: int64(n), SHA256: hex.EncodeToString(sum[:]),
		}, bytes.NewReader(data), filetransfer.WithStats(&st))
		return st, err
	}
	_, err = send("first.mp4", 700<<10)
	require.NoError(t, err)
	require.Equal(t, int64(1), stored.Load())

	st, err := send("second.mp4", 400<<10)
	require.ErrorIs(t, err, filestore.ErrQuotaExceeded)
	require.Contains(t, err.Error(), "user001 uses 716.8 kB of 1.0 MB")
	require.Equal(t, 1, st.Attempts, "a quota refusal is final, not retried")
	require.Zero(t, st.BytesSent)

	_, err = send("small.png", 100<<10)
	require.NoError(t, err, "what fits still goes")
	require.Equal(t, int64(2), stored.Load())
	used, err := quotas.Used(ctx, "user001")
	require.NoError(t, err)

	// The same bytes under the same name again (another job saved an
	// identical output): the stored file is reused, nothing new is on disk
	// and nothing more counts against the quota.
	_, err = sendAs("again", "small.png", 100<<10)
	require.NoError(t, err)
	require.Equal(t, int64(2), stored.Load(), "a reused file is not reported as stored")
	again, err := quotas.Used(ctx, "user001")
	require.NoError(t, err)
	require.Equal(t, used, again)
}
