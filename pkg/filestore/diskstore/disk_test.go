package diskstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
)

type testBundle struct {
	ctx    context.Context
	layout datalayout.Layout
	store  *diskstore.Store
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	layout := datalayout.New(t.TempDir())
	require.NoError(t, layout.Ensure())
	require.NoError(t, layout.EnsureInstance("user007"))
	return &testBundle{ctx: context.Background(), layout: layout, store: diskstore.New(layout)}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func put(t *testing.T, b *testBundle, ref filestore.Ref, data []byte, opts ...filestore.CreateOption) filestore.Info {
	t.Helper()
	w, err := b.store.Create(b.ctx, ref, opts...)
	require.NoError(t, err)
	defer w.Abort()
	_, err = w.Write(data)
	require.NoError(t, err)
	info, err := w.Commit(b.ctx, sum(data))
	require.NoError(t, err)
	return info
}

func TestDiskRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t)

	ref := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Subfolder: "video/day1/", Name: "ComfyUI_00001_.png"}
	data := []byte("hello, png")
	info := put(t, b, ref, data, filestore.ExpectSize(int64(len(data))))
	require.Equal(t, "video/day1", info.Ref.Subfolder, "subfolder canonical")
	require.Equal(t, int64(len(data)), info.Size)
	require.Equal(t, sum(data), info.SHA256)

	// On disk where the layout says.
	got, err := os.ReadFile(filepath.Join(b.layout.OutputDir("user007"), "video", "day1", "ComfyUI_00001_.png"))
	require.NoError(t, err)
	require.Equal(t, data, got)

	f, err := b.store.Open(b.ctx, ref)
	require.NoError(t, err)
	all, err := io.ReadAll(f)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.Equal(t, data, all)
	require.Equal(t, sum(data), f.Info().SHA256, "sha256 remembered (xattr)")
	require.Equal(t, `"sha256-`+sum(data)+`"`, f.Info().ETag())

	st, err := b.store.Stat(b.ctx, ref)
	require.NoError(t, err)
	require.Equal(t, info.Size, st.Size)

	list, err := b.store.List(b.ctx, "user007", filestore.KindOutput, "video/day1")
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, "ComfyUI_00001_.png", list[0].Ref.Name)

	// Missing folders list as empty.
	list, err = b.store.List(b.ctx, "user007", filestore.KindInput, "nope")
	require.NoError(t, err)
	require.Empty(t, list)

	require.NoError(t, b.store.Remove(b.ctx, ref))
	_, err = b.store.Stat(b.ctx, ref)
	require.ErrorIs(t, err, filestore.ErrNotFound)
	require.ErrorIs(t, b.store.Remove(b.ctx, ref), filestore.ErrNotFound)
}

func TestDiskServeContentRange(t *testing.T) {
	t.Parallel()
	b := setup(t)

	ref := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Name: "clip.mp4"}
	data := bytes.Repeat([]byte("0123456789"), 1000)
	put(t, b, ref, data)

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := b.store.Open(r.Context(), ref)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		w.Header().Set("ETag", f.Info().ETag())
		http.ServeContent(w, r, ref.Name, f.Info().ModTime, f)
	}))
	t.Cleanup(srv.Close)

	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header.Set("Range", "bytes=10-19")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.Equal(t, "0123456789", string(body))

	req.Header.Del("Range")
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotModified, resp.StatusCode)
}

func TestDiskCommitRules(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ref := filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: "a.png"}

	t.Run("checksum mismatch stores nothing", func(t *testing.T) {
		w, err := b.store.Create(b.ctx, ref)
		require.NoError(t, err)
		_, _ = w.Write([]byte("abc"))
		_, err = w.Commit(b.ctx, sum([]byte("abd")))
		require.ErrorIs(t, err, filestore.ErrChecksumMismatch)
		_, err = b.store.Stat(b.ctx, ref)
		require.ErrorIs(t, err, filestore.ErrNotFound)
		requireNoTemp(t, b.layout.InputDir("user007"))
	})
	t.Run("size mismatch", func(t *testing.T) {
		w, err := b.store.Create(b.ctx, ref, filestore.ExpectSize(4))
		require.NoError(t, err)
		_, _ = w.Write([]byte("abc"))
		_, err = w.Commit(b.ctx, "")
		require.ErrorIs(t, err, filestore.ErrChecksumMismatch)
		requireNoTemp(t, b.layout.InputDir("user007"))
	})
	t.Run("abort", func(t *testing.T) {
		w, err := b.store.Create(b.ctx, ref)
		require.NoError(t, err)
		_, _ = w.Write([]byte("abc"))
		require.NoError(t, w.Abort())
		require.NoError(t, w.Abort(), "second abort is a no-op")
		_, err = w.Write([]byte("x"))
		require.ErrorIs(t, err, filestore.ErrClosed)
		requireNoTemp(t, b.layout.InputDir("user007"))
	})
	t.Run("exists and overwrite", func(t *testing.T) {
		ref := ref
		ref.Name = "b.png"
		put(t, b, ref, []byte("one"))
		w, err := b.store.Create(b.ctx, ref)
		require.NoError(t, err)
		_, _ = w.Write([]byte("two"))
		_, err = w.Commit(b.ctx, "")
		require.ErrorIs(t, err, filestore.ErrExists)
		put(t, b, ref, []byte("two"), filestore.Overwrite())
		f, err := b.store.Open(b.ctx, ref)
		require.NoError(t, err)
		got, _ := io.ReadAll(f)
		f.Close()
		require.Equal(t, "two", string(got))
		requireNoTemp(t, b.layout.InputDir("user007"))
	})
}

func requireNoTemp(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		require.False(t, strings.HasPrefix(e.Name(), "."), "leftover %s", e.Name())
	}
}

func TestDiskImport(t *testing.T) {
	t.Parallel()
	b := setup(t)

	staging := filepath.Join(b.layout.Root, "staging")
	require.NoError(t, os.MkdirAll(staging, 0o700))
	src := filepath.Join(staging, "x.part")
	data := []byte("imported bytes")
	require.NoError(t, os.WriteFile(src, data, 0o600))

	ref := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Name: "out.png"}
	info, err := b.store.Import(b.ctx, ref, src, sum(data))
	require.NoError(t, err)
	require.Equal(t, sum(data), info.SHA256)
	_, err = os.Stat(src)
	require.ErrorIs(t, err, os.ErrNotExist, "moved, not copied")

	// Name taken: the source stays where it was so the caller can retry.
	require.NoError(t, os.WriteFile(src, []byte("other"), 0o600))
	_, err = b.store.Import(b.ctx, ref, src, sum([]byte("other")))
	require.ErrorIs(t, err, filestore.ErrExists)
	_, err = os.Stat(src)
	require.NoError(t, err)
	requireNoTemp(t, b.layout.OutputDir("user007"))
}

func TestUniqueName(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ref := filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: "cat.png"}

	name, exists, err := filestore.UniqueName(b.ctx, b.store, ref, sum([]byte("A")))
	require.NoError(t, err)
	require.Equal(t, "cat.png", name)
	require.False(t, exists)
	put(t, b, ref, []byte("A"))

	name, exists, err = filestore.UniqueName(b.ctx, b.store, ref, sum([]byte("A")))
	require.NoError(t, err)
	require.Equal(t, "cat.png", name)
	require.True(t, exists, "same content is reused")

	name, exists, err = filestore.UniqueName(b.ctx, b.store, ref, sum([]byte("B")))
	require.NoError(t, err)
	require.Equal(t, "cat (1).png", name)
	require.False(t, exists)
	put(t, b, filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: name}, []byte("B"))

	name, _, err = filestore.UniqueName(b.ctx, b.store, ref, sum([]byte("C")))
	require.NoError(t, err)
	require.Equal(t, "cat (2).png", name)

	name, exists, err = filestore.UniqueName(b.ctx, b.store, ref, sum([]byte("B")))
	require.NoError(t, err)
	require.Equal(t, "cat (1).png", name)
	require.True(t, exists)

	// A file written behind the store's back (no xattr) is hashed.
	require.NoError(t, os.WriteFile(filepath.Join(b.layout.InputDir("user007"), "dog"), []byte("D"), 0o640))
	name, exists, err = filestore.UniqueName(b.ctx, b.store, filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: "dog"}, sum([]byte("D")))
	require.NoError(t, err)
	require.Equal(t, "dog", name)
	require.True(t, exists)
}

func TestDiskTraversalRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, b.layout.EnsureInstance("user008"))
	secret := filepath.Join(b.layout.OutputDir("user008"), "secret.png")
	require.NoError(t, os.WriteFile(secret, []byte("secret"), 0o640))

	bad := []filestore.Ref{
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "../../user008/output", Name: "secret.png"},
		{User: "user007", Kind: filestore.KindOutput, Name: "../secret.png"},
		{User: "user007", Kind: filestore.KindOutput, Name: ".."},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "/etc", Name: "passwd"},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "a//b", Name: "x"},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "./a", Name: "x"},
		{User: "user007", Kind: filestore.KindOutput, Name: `..\secret.png`},
		{User: "user007", Kind: filestore.KindOutput, Name: "a\x00b"},
		{User: "user007", Kind: filestore.KindOutput, Name: "a/b"},
		{User: "user007", Kind: filestore.KindOutput, Name: ""},
		{User: "../user008", Kind: filestore.KindOutput, Name: "secret.png"},
		{User: "user007", Kind: "../user008/output", Name: "secret.png"},
		{User: "user007", Kind: "models", Name: "x"},
	}
	for _, ref := range bad {
		_, err := b.store.Open(b.ctx, ref)
		require.ErrorIs(t, err, filestore.ErrInvalidName, "%#v", ref)
		_, err = b.store.Create(b.ctx, ref)
		require.ErrorIs(t, err, filestore.ErrInvalidName, "%#v", ref)
		require.ErrorIs(t, b.store.Remove(b.ctx, ref), filestore.ErrInvalidName, "%#v", ref)
	}
	_, err := os.Stat(secret)
	require.NoError(t, err)
}

func TestDiskSymlinksNotFollowed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, b.layout.EnsureInstance("user008"))
	other := b.layout.OutputDir("user008")
	require.NoError(t, os.WriteFile(filepath.Join(other, "secret.png"), []byte("secret"), 0o640))
	out := b.layout.OutputDir("user007")

	// A link to a file of another participant (inside the store, so os.Root
	// alone would follow it), to a directory, and to outside the data dir.
	require.NoError(t, os.Symlink(filepath.Join(other, "secret.png"), filepath.Join(out, "file-link.png")))
	require.NoError(t, os.Symlink("../../user008/output/secret.png", filepath.Join(out, "rel-link.png")))
	require.NoError(t, os.Symlink(other, filepath.Join(out, "dirlink")))
	require.NoError(t, os.Symlink("/etc", filepath.Join(out, "etc")))

	for _, ref := range []filestore.Ref{
		{User: "user007", Kind: filestore.KindOutput, Name: "file-link.png"},
		{User: "user007", Kind: filestore.KindOutput, Name: "rel-link.png"},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "dirlink", Name: "secret.png"},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "etc", Name: "passwd"},
	} {
		_, err := b.store.Open(b.ctx, ref)
		require.ErrorIs(t, err, filestore.ErrInvalidName, "%v", ref)
	}
	// Writing through a linked directory is refused too.
	_, err := b.store.Create(b.ctx, filestore.Ref{User: "user007", Kind: filestore.KindOutput, Subfolder: "dirlink", Name: "planted.png"})
	require.ErrorIs(t, err, filestore.ErrInvalidName)
	_, err = os.Stat(filepath.Join(other, "planted.png"))
	require.ErrorIs(t, err, os.ErrNotExist)

	// A symlinked kind folder is refused as well.
	require.NoError(t, os.RemoveAll(b.layout.TempDir("user007")))
	require.NoError(t, os.Symlink(other, b.layout.TempDir("user007")))
	_, err = b.store.Open(b.ctx, filestore.Ref{User: "user007", Kind: filestore.KindTemp, Name: "secret.png"})
	require.ErrorIs(t, err, filestore.ErrInvalidName)

	// Overwriting a link replaces the link, never the target.
	put(t, b, filestore.Ref{User: "user007", Kind: filestore.KindOutput, Name: "file-link.png"}, []byte("mine"), filestore.Overwrite())
	got, err := os.ReadFile(filepath.Join(other, "secret.png"))
	require.NoError(t, err)
	require.Equal(t, "secret", string(got))

	// List leaves links out.
	list, err := b.store.List(b.ctx, "user007", filestore.KindOutput, "")
	require.NoError(t, err)
	for _, i := range list {
		require.NotEqual(t, "rel-link.png", i.Ref.Name)
	}
}

func TestDiskConcurrentCreate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ref := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Subfolder: "deep/er", Name: "same.png"}

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			w, err := b.store.Create(b.ctx, ref)
			if err != nil {
				errs <- err
				return
			}
			defer w.Abort()
			_, _ = w.Write([]byte{byte(i)})
			_, err = w.Commit(b.ctx, "")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	var ok, exists int
	for err := range errs {
		switch {
		case err == nil:
			ok++
		default:
			require.ErrorIs(t, err, filestore.ErrExists)
			exists++
		}
	}
	require.Equal(t, 1, ok, "exactly one writer wins the name")
	require.Equal(t, 7, exists)
}

func TestContextCanceled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(b.ctx)
	cancel()
	_, err := b.store.Open(ctx, filestore.Ref{User: "user007", Kind: filestore.KindOutput, Name: "x"})
	require.ErrorIs(t, err, context.Canceled)
}
