package retention_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/retention"
)

type testBundle struct {
	ctx    context.Context
	layout datalayout.Layout
	store  *diskstore.Store
	now    time.Time
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	layout := datalayout.New(t.TempDir())
	require.NoError(t, layout.Ensure())
	return &testBundle{ctx: context.Background(), layout: layout, store: diskstore.New(layout), now: time.Now()}
}

// put stores n bytes under ref and sets its modification time to age ago.
func (b *testBundle) put(t *testing.T, ref filestore.Ref, n int, age time.Duration) {
	t.Helper()
	data := make([]byte, n)
	w, err := b.store.Create(b.ctx, ref)
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	s := sha256.Sum256(data)
	_, err = w.Commit(b.ctx, hex.EncodeToString(s[:]))
	require.NoError(t, err)
	p := filepath.Join(b.layout.InstancesDir(), ref.User, string(ref.Kind), ref.Subfolder, ref.Name)
	mt := b.now.Add(-age)
	require.NoError(t, os.Chtimes(p, mt, mt))
}

func ref(user string, kind filestore.Kind, sub, name string) filestore.Ref {
	return filestore.Ref{User: user, Kind: kind, Subfolder: sub, Name: name}
}

func (b *testBundle) exists(ref filestore.Ref) bool {
	_, err := b.store.Stat(b.ctx, ref)
	return err == nil
}

func TestJanitorDeletesExpiredOutputsAndTemp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	oldOut := ref("user001", filestore.KindOutput, "video/day1", "old.mp4")
	newOut := ref("user001", filestore.KindOutput, "", "new.png")
	oldTemp := ref("user002", filestore.KindTemp, "", "preview.png")
	newTemp := ref("user002", filestore.KindTemp, "", "fresh.png")
	oldIn := ref("user002", filestore.KindInput, "", "ref.png")
	b.put(t, oldOut, 1000, 8*24*time.Hour)
	b.put(t, newOut, 10, time.Hour)
	b.put(t, oldTemp, 100, 25*time.Hour)
	b.put(t, newTemp, 100, time.Minute)
	b.put(t, oldIn, 100, 365*24*time.Hour)
	// A link in a participant's folder to a file outside must not be
	// followed, counted or have its target deleted.
	outside := filepath.Join(t.TempDir(), "outside.bin")
	require.NoError(t, os.WriteFile(outside, []byte("keep me"), 0o600))
	old := b.now.Add(-30 * 24 * time.Hour)
	require.NoError(t, os.Chtimes(outside, old, old))
	require.NoError(t, os.Symlink(outside, filepath.Join(b.layout.InstancesDir(), "user001", "output", "link.bin")))
	require.NoError(t, os.Symlink(filepath.Dir(outside), filepath.Join(b.layout.InstancesDir(), "user001", "output", "linkdir")))

	j, err := retention.NewJanitor(retention.JanitorConfig{Store: b.store, Now: func() time.Time { return b.now }})
	require.NoError(t, err)
	res, err := j.Sweep(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, res.Deleted)
	require.Equal(t, int64(1100), res.DeletedBytes)
	require.False(t, b.exists(oldOut))
	require.False(t, b.exists(oldTemp))
	require.True(t, b.exists(newOut))
	require.True(t, b.exists(newTemp))
	require.True(t, b.exists(oldIn), "inputs are kept by default")
	require.FileExists(t, outside)

	// Inputs expire when configured; the loop signals each sweep.
	j2, err := retention.NewJanitor(retention.JanitorConfig{Store: b.store, InputTTL: 30 * 24 * time.Hour, TempTTL: -1,
		Interval: time.Hour, Now: func() time.Time { return b.now }})
	require.NoError(t, err)
	require.NoError(t, j2.Start(b.ctx))
	t.Cleanup(func() { require.NoError(t, j2.Stop(context.Background())) })
	res = <-j2.Swept()
	require.Equal(t, 1, res.Deleted)
	require.False(t, b.exists(oldIn))
	require.True(t, b.exists(newTemp))
	require.NoError(t, j2.Stop(b.ctx))
	require.NoError(t, j2.Stop(b.ctx)) // idempotent
}

func TestUsageAndQuota(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.put(t, ref("user001", filestore.KindInput, "", "a.png"), 100, 0)
	b.put(t, ref("user001", filestore.KindOutput, "video", "b.mp4"), 5000, 0)
	b.put(t, ref("user001", filestore.KindOutput, "video/deeper", "c.mp4"), 1000, 0)
	b.put(t, ref("user001", filestore.KindTemp, "", "d.png"), 10, 0)
	b.put(t, ref("user002", filestore.KindOutput, "", "e.png"), 7, 0)
	// A file outside the store linked from user002's folder is not theirs.
	outside := filepath.Join(t.TempDir(), "big")
	require.NoError(t, os.WriteFile(outside, make([]byte, 1<<20), 0o600))
	require.NoError(t, os.Symlink(outside, filepath.Join(b.layout.InstancesDir(), "user002", "output", "big")))

	rep, err := retention.Usage(b.ctx, b.store)
	require.NoError(t, err)
	require.Len(t, rep.Users, 2)
	u1 := rep.Users[0]
	require.Equal(t, "user001", u1.User)
	require.Equal(t, retention.KindUsage{Bytes: 100, Files: 1}, u1.Kinds[filestore.KindInput])
	require.Equal(t, retention.KindUsage{Bytes: 6000, Files: 2}, u1.Kinds[filestore.KindOutput])
	require.Equal(t, retention.KindUsage{Bytes: 10, Files: 1}, u1.Kinds[filestore.KindTemp])
	require.Equal(t, int64(6110), u1.Total)
	require.Equal(t, int64(7), rep.Users[1].Total, "links are not counted")
	require.Equal(t, int64(6117), rep.Total)

	now := b.now
	q, err := retention.NewQuotas(retention.QuotaConfig{
		Store: b.store, DefaultLimit: 7000, MaxAge: time.Minute, Now: func() time.Time { return now },
		Limit: func(u string) (int64, bool) { return 10, u == "user002" },
	})
	require.NoError(t, err)
	require.NoError(t, q.Check(b.ctx, "user001", 890))
	err = q.Check(b.ctx, "user001", 891)
	require.ErrorIs(t, err, filestore.ErrQuotaExceeded)
	require.Contains(t, err.Error(), "user001 uses 6.1 kB of 7.0 kB")
	require.NoError(t, q.Check(b.ctx, "user002", 3))
	require.ErrorIs(t, q.Check(b.ctx, "user002", 4), filestore.ErrQuotaExceeded)
	require.NoError(t, q.Check(b.ctx, "nobody", 6999), "no folder yet: nothing used")

	// Added counts at once; the next walk after MaxAge measures again.
	q.Added("user001", 800)
	require.ErrorIs(t, q.Check(b.ctx, "user001", 100), filestore.ErrQuotaExceeded)
	now = now.Add(2 * time.Minute)
	require.NoError(t, q.Check(b.ctx, "user001", 100), "re-measured: the 800 bytes were never stored")

	full, err := q.Report(b.ctx)
	require.NoError(t, err)
	require.Equal(t, int64(7000), full.Users[0].Limit)
	require.False(t, full.Users[0].Over)
	require.Equal(t, int64(10), full.Users[1].Limit)
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := retention.NewJanitor(retention.JanitorConfig{})
	require.Error(t, err)
	_, err = retention.NewQuotas(retention.QuotaConfig{})
	require.Error(t, err)
	_, err = retention.NewQuotas(retention.QuotaConfig{Store: diskstore.New(datalayout.New(t.TempDir())), DefaultLimit: -1})
	require.Error(t, err)
}
