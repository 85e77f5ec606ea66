package metrics

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/stretchr/testify/require"
)

// The counting store counts what is committed or imported into it (in)
// and what is read from it (out), by kind; an aborted write counts
// nothing; it keeps the store's Importer and Walker.
func TestCountTransfers(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := context.Background()
	layout := datalayout.New(tb.dir)
	require.NoError(t, layout.Ensure())
	require.NoError(t, layout.EnsureInstance("user001"))
	st := tb.m.CountTransfers(diskstore.New(layout))
	_, isImporter := st.(filestore.Importer)
	require.True(t, isImporter)
	_, isWalker := st.(filestore.Walker)
	require.True(t, isWalker)

	out := filestore.Ref{User: "user001", Kind: filestore.KindOutput, Name: "a.png"}
	w, err := st.Create(ctx, out)
	require.NoError(t, err)
	_, err = w.Write([]byte(strings.Repeat("x", 1000)))
	require.NoError(t, err)
	_, err = w.Commit(ctx, "")
	require.NoError(t, err)

	aborted, err := st.Create(ctx, filestore.Ref{User: "user001", Kind: filestore.KindOutput, Name: "b.png"})
	require.NoError(t, err)
	_, _ = aborted.Write([]byte("never stored"))
	require.NoError(t, aborted.Abort())

	staged := filepath.Join(t.TempDir(), "staged")
	content := []byte(strings.Repeat("y", 500))
	require.NoError(t, os.WriteFile(staged, content, 0o600))
	sum := sha256.Sum256(content)
	_, err = st.(filestore.Importer).Import(ctx, filestore.Ref{User: "user001", Kind: filestore.KindTemp, Name: "p.png"}, staged, hex.EncodeToString(sum[:]))
	require.NoError(t, err)

	f, err := st.Open(ctx, out)
	require.NoError(t, err)
	buf := make([]byte, 100)
	_, err = f.ReadAt(buf, 10)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, f)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	users, err := st.(filestore.Walker).Users(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"user001"}, users)

	m := tb.scrape(t)
	for _, want := range []string{
		`atelier_transfer_bytes_total{direction="in",kind="output"} 1000`,
		`atelier_transfer_bytes_total{direction="in",kind="temp"} 500`,
		`atelier_transfer_bytes_total{direction="out",kind="output"} 1100`,
		`atelier_transfer_files_total{direction="in",kind="output"} 1`,
		`atelier_transfer_files_total{direction="in",kind="temp"} 1`,
		`atelier_transfer_files_total{direction="out",kind="output"} 1`,
	} {
		require.Contains(t, m, want)
	}
}
