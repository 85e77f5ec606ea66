package s3store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/filestore/s3store"
)

// The S3 store is tested against a real S3 server running in this process:
// gofakes3 with its in-memory backend speaks the S3 REST protocol over
// HTTP to the real AWS SDK. No S3-compatible service (MinIO, R2, AWS) can be
// reached from the test machines; against one, only the client options
// (endpoint, credentials) change.

type s3Bundle struct {
	ctx    context.Context
	store  *s3store.Store
	client *s3.Client
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func setupS3(t *testing.T) *s3Bundle {
	t.Helper()
	backend := s3mem.New()
	require.NoError(t, backend.CreateBucket("atelier"))
	ts := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(ts.Close)
	client := s3.New(s3.Options{
		BaseEndpoint: aws.String(ts.URL), Region: "us-east-1", UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
		// S3-compatible services vary in their support for the SDK's
		// default trailing checksums; ours are sha256 over the content.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	st, err := s3store.New(s3store.Config{Client: client, Bucket: "atelier", Prefix: "instances/", PartSize: s3store.MinPartSize})
	require.NoError(t, err)
	return &s3Bundle{ctx: context.Background(), store: st, client: client}
}

func s3Put(t *testing.T, b *s3Bundle, ref filestore.Ref, data []byte, opts ...filestore.CreateOption) filestore.Info {
	t.Helper()
	w, err := b.store.Create(b.ctx, ref, opts...)
	require.NoError(t, err)
	defer w.Abort()
	// Odd-sized writes cross part boundaries.
	for off := 0; off < len(data); off += 777_777 {
		_, err = w.Write(data[off:min(off+777_777, len(data))])
		require.NoError(t, err)
	}
	info, err := w.Commit(b.ctx, sum(data))
	require.NoError(t, err)
	return info
}

func s3Read(t *testing.T, b *s3Bundle, ref filestore.Ref) []byte {
	t.Helper()
	f, err := b.store.Open(b.ctx, ref)
	require.NoError(t, err)
	defer f.Close()
	data, err := io.ReadAll(f)
	require.NoError(t, err)
	return data
}

func TestS3RoundTrip(t *testing.T) {
	t.Parallel()
	b := setupS3(t)

	small := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Subfolder: "day1/", Name: "ComfyUI_00001_.png"}
	info := s3Put(t, b, small, []byte("hello, png"))
	require.Equal(t, "day1", info.Ref.Subfolder)
	require.Equal(t, sum([]byte("hello, png")), info.SHA256)
	require.Equal(t, []byte("hello, png"), s3Read(t, b, small))

	// 12 MiB + 5: three 5 MiB parts through a multipart upload.
	big := make([]byte, 12<<20+5)
	_, _ = rand.Read(big)
	bigRef := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Subfolder: "video", Name: "LTX_00001_.mp4"}
	s3Put(t, b, bigRef, big, filestore.ExpectSize(int64(len(big))))
	require.Equal(t, big, s3Read(t, b, bigRef))
	st, err := b.store.Stat(b.ctx, bigRef)
	require.NoError(t, err)
	require.Equal(t, int64(len(big)), st.Size)
	require.Equal(t, sum(big), st.SHA256, "sum kept in the object's metadata")
	require.Equal(t, `"sha256-`+sum(big)+`"`, st.ETag())
	got, err := filestore.SHA256Of(b.ctx, b.store, bigRef)
	require.NoError(t, err)
	require.Equal(t, sum(big), got)

	// ReadAt at arbitrary offsets.
	f, err := b.store.Open(b.ctx, bigRef)
	require.NoError(t, err)
	buf := make([]byte, 1000)
	n, err := f.ReadAt(buf, 7<<20+3)
	require.NoError(t, err)
	require.Equal(t, 1000, n)
	require.Equal(t, big[7<<20+3:7<<20+1003], buf)
	n, err = f.ReadAt(buf, int64(len(big))-10)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, 10, n)
	require.NoError(t, f.Close())

	// List, Users, Walk.
	list, err := b.store.List(b.ctx, "user007", filestore.KindOutput, "video")
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, "LTX_00001_.mp4", list[0].Ref.Name)
	list, err = b.store.List(b.ctx, "user007", filestore.KindOutput, "")
	require.NoError(t, err)
	require.Empty(t, list, "files in subfolders are not listed directly")
	s3Put(t, b, filestore.Ref{User: "user008", Kind: filestore.KindInput, Name: "cat.png"}, []byte("meow"))
	users, err := b.store.Users(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"user007", "user008"}, users)
	var walked []string
	require.NoError(t, b.store.Walk(b.ctx, "user007", filestore.KindOutput, func(i filestore.Info) error {
		walked = append(walked, i.Ref.Subfolder+"|"+i.Ref.Name+"|"+fmt.Sprint(i.Size))
		return nil
	}))
	require.ElementsMatch(t, []string{"day1|ComfyUI_00001_.png|10", fmt.Sprintf("video|LTX_00001_.mp4|%d", len(big))}, walked)

	// UniqueName (ComfyUI's upload rule) works on S3 as on disk.
	name, exists, err := filestore.UniqueName(b.ctx, b.store, small, sum([]byte("other")))
	require.NoError(t, err)
	require.False(t, exists)
	require.Equal(t, "ComfyUI_00001_ (1).png", name)
	name, exists, err = filestore.UniqueName(b.ctx, b.store, small, sum([]byte("hello, png")))
	require.NoError(t, err)
	require.True(t, exists)
	require.Equal(t, "ComfyUI_00001_.png", name)

	require.NoError(t, b.store.Remove(b.ctx, bigRef))
	_, err = b.store.Stat(b.ctx, bigRef)
	require.ErrorIs(t, err, filestore.ErrNotFound)
	require.ErrorIs(t, b.store.Remove(b.ctx, bigRef), filestore.ErrNotFound)
	_, err = b.store.Open(b.ctx, bigRef)
	require.ErrorIs(t, err, filestore.ErrNotFound)
}

func TestS3CommitRules(t *testing.T) {
	t.Parallel()
	b := setupS3(t)
	ref := filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: "a.png"}
	s3Put(t, b, ref, []byte("one"))

	// Without Overwrite an existing name is refused, small or multipart.
	for _, data := range [][]byte{[]byte("two"), make([]byte, 11<<20)} {
		w, err := b.store.Create(b.ctx, ref)
		require.NoError(t, err)
		_, _ = w.Write(data)
		_, err = w.Commit(b.ctx, sum(data))
		require.ErrorIs(t, err, filestore.ErrExists)
	}
	require.Equal(t, []byte("one"), s3Read(t, b, ref))
	s3Put(t, b, ref, []byte("three"), filestore.Overwrite())
	require.Equal(t, []byte("three"), s3Read(t, b, ref))

	// A wrong sum or size stores nothing, multipart uploads included.
	other := filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: "b.bin"}
	for _, data := range [][]byte{[]byte("small"), make([]byte, 11<<20)} {
		w, err := b.store.Create(b.ctx, other)
		require.NoError(t, err)
		_, _ = w.Write(data)
		_, err = w.Commit(b.ctx, sum([]byte("not it")))
		require.ErrorIs(t, err, filestore.ErrChecksumMismatch)
		_, err = b.store.Stat(b.ctx, other)
		require.ErrorIs(t, err, filestore.ErrNotFound)

		w, err = b.store.Create(b.ctx, other, filestore.ExpectSize(int64(len(data)+1)))
		require.NoError(t, err)
		_, _ = w.Write(data)
		_, err = w.Commit(b.ctx, "")
		require.ErrorIs(t, err, filestore.ErrChecksumMismatch)
	}
	// Abort of a multipart upload leaves nothing; Commit after Abort fails.
	w, err := b.store.Create(b.ctx, other)
	require.NoError(t, err)
	_, _ = w.Write(make([]byte, 11<<20))
	require.NoError(t, w.Abort())
	_, err = w.Commit(b.ctx, "")
	require.ErrorIs(t, err, filestore.ErrClosed)
	_, err = b.store.Stat(b.ctx, other)
	require.ErrorIs(t, err, filestore.ErrNotFound)
	uploads, err := b.client.ListMultipartUploads(b.ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String("atelier")})
	require.NoError(t, err)
	require.Empty(t, uploads.Uploads, "no multipart upload left behind")
}

// TestS3ServeContentRange: /view serves S3 files with http.ServeContent
// over the store's File; Range requests become ranged GETs.
func TestS3ServeContentRange(t *testing.T) {
	t.Parallel()
	b := setupS3(t)
	data := make([]byte, 6<<20+7)
	_, _ = rand.Read(data)
	ref := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Name: "v.webm"}
	s3Put(t, b, ref, data)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := b.store.Open(r.Context(), ref)
		require.NoError(t, err)
		defer f.Close()
		w.Header().Set("ETag", f.Info().ETag())
		http.ServeContent(w, r, ref.Name, f.Info().ModTime, f)
	}))
	defer srv.Close()
	get := func(rng string) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, body
	}
	size := int64(len(data))
	resp, body := get("")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, data, body)
	for _, tc := range []struct {
		rng      string
		from, to int64
	}{
		{"bytes=0-99", 0, 99},
		{"bytes=5242870-5242889", 5242870, 5242889}, // across the first part boundary
		{"bytes=-100", size - 100, size - 1},
		{"bytes=6291000-", 6291000, size - 1},
	} {
		resp, body := get(tc.rng)
		require.Equal(t, http.StatusPartialContent, resp.StatusCode, tc.rng)
		require.Equal(t, fmt.Sprintf("bytes %d-%d/%d", tc.from, tc.to, size), resp.Header.Get("Content-Range"))
		require.Equal(t, data[tc.from:tc.to+1], body, tc.rng)
	}
	resp, _ = get(fmt.Sprintf("bytes=%d-", size))
	require.Equal(t, http.StatusRequestedRangeNotSatisfiable, resp.StatusCode)
	require.Equal(t, fmt.Sprintf("bytes */%d", size), resp.Header.Get("Content-Range"))
}

// TestS3ValidationSameAsDisk: every Ref the disk store refuses, the S3
// store refuses too, before any request reaches the bucket.
func TestS3ValidationSameAsDisk(t *testing.T) {
	t.Parallel()
	b := setupS3(t)
	layout := datalayout.New(t.TempDir())
	require.NoError(t, layout.Ensure())
	require.NoError(t, layout.EnsureInstance("user007"))
	disk := diskstore.New(layout)
	bad := []filestore.Ref{
		{User: "user007", Kind: filestore.KindOutput, Name: "../user008/x.png"},
		{User: "user007", Kind: filestore.KindOutput, Name: ".."},
		{User: "user007", Kind: filestore.KindOutput, Name: ".hidden"},
		{User: "user007", Kind: filestore.KindOutput, Name: "/etc/passwd"},
		{User: "user007", Kind: filestore.KindOutput, Name: "a\\b.png"},
		{User: "user007", Kind: filestore.KindOutput, Name: "a\x00.png"},
		{User: "user007", Kind: filestore.KindOutput, Name: ""},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "../../user008", Name: "x.png"},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "/abs", Name: "x.png"},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "a//b", Name: "x.png"},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "a/./b", Name: "x.png"},
		{User: "../user008", Kind: filestore.KindOutput, Name: "x.png"},
		{User: "user007/../user008", Kind: filestore.KindOutput, Name: "x.png"},
		{User: "user007", Kind: "../user008/output", Name: "x.png"},
		{User: "user007", Kind: "models", Name: "x.png"},
	}
	for _, ref := range bad {
		_, err := disk.Stat(b.ctx, ref)
		require.ErrorIs(t, err, filestore.ErrInvalidName, "disk %v", ref)
		_, err = b.store.Stat(b.ctx, ref)
		require.ErrorIs(t, err, filestore.ErrInvalidName, "s3 stat %v", ref)
		_, err = b.store.Open(b.ctx, ref)
		require.ErrorIs(t, err, filestore.ErrInvalidName, "s3 open %v", ref)
		_, err = b.store.Create(b.ctx, ref)
		require.ErrorIs(t, err, filestore.ErrInvalidName, "s3 create %v", ref)
		require.ErrorIs(t, b.store.Remove(b.ctx, ref), filestore.ErrInvalidName, "s3 remove %v", ref)
	}
	_, err := b.store.List(b.ctx, "user007", filestore.KindOutput, "../user008")
	require.ErrorIs(t, err, filestore.ErrInvalidName)

	// Keys written into the bucket by something else that no Ref could
	// name are invisible: never listed, walked or counted.
	for _, key := range []string{"instances/user007/output/../user008/x", "instances/user007/output/.hidden", "instances/user007/output/a//b"} {
		_, err := b.client.PutObject(b.ctx, &s3.PutObjectInput{Bucket: aws.String("atelier"), Key: aws.String(key), Body: bytes.NewReader([]byte("x"))})
		require.NoError(t, err)
	}
	n := 0
	require.NoError(t, b.store.Walk(b.ctx, "user007", filestore.KindOutput, func(filestore.Info) error { n++; return nil }))
	require.Zero(t, n)
}

// TestS3NoOverwriteMultipartIsConditional: without Overwrite, the
// completion of a multipart upload is a conditional write (If-None-Match),
// so a writer that loses the race for a new name between its check and its
// completion gets ErrExists instead of replacing the winner's file.
// gofakes3 does not evaluate conditions on completions; the handler in
// front of it does, as AWS S3, R2 and MinIO do.
func TestS3NoOverwriteMultipartIsConditional(t *testing.T) {
	t.Parallel()
	backend := s3mem.New()
	require.NoError(t, backend.CreateBucket("atelier"))
	fake := gofakes3.New(backend).Server()
	var conditional atomic.Int32
	var race atomic.Pointer[func(key string)]
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Query().Has("uploadId") && r.Header.Get("If-None-Match") == "*" {
			conditional.Add(1)
			key := strings.TrimPrefix(r.URL.Path, "/atelier/")
			if fn := race.Load(); fn != nil {
				(*fn)(key)
			}
			if _, err := backend.HeadObject("atelier", key); err == nil {
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusPreconditionFailed)
				_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>`)
				return
			}
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	client := s3.New(s3.Options{
		BaseEndpoint: aws.String(ts.URL), Region: "us-east-1", UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider("test", "test", ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	st, err := s3store.New(s3store.Config{Client: client, Bucket: "atelier", Prefix: "instances/", PartSize: s3store.MinPartSize})
	require.NoError(t, err)
	b := &s3Bundle{ctx: context.Background(), store: st, client: client}

	// A new large file: the completion carries the condition and succeeds.
	data := make([]byte, 11<<20)
	_, _ = rand.Read(data)
	fresh := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Name: "fresh.mp4"}
	s3Put(t, b, fresh, data)
	require.Equal(t, int32(1), conditional.Load())
	require.Equal(t, data, s3Read(t, b, fresh))

	// Another writer stores the same new name just after this one checked
	// it was free: this one's completion is refused, the winner's file
	// stays, and nothing is left behind.
	contested := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Name: "contested.mp4"}
	winner := []byte("the other writer's file")
	hook := func(key string) {
		_, err := backend.PutObject("atelier", key, map[string]string{}, bytes.NewReader(winner), int64(len(winner)), nil)
		require.NoError(t, err)
	}
	race.Store(&hook)
	w, err := b.store.Create(b.ctx, contested)
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	_, err = w.Commit(b.ctx, sum(data))
	require.ErrorIs(t, err, filestore.ErrExists)
	race.Store(nil)
	require.Equal(t, winner, s3Read(t, b, contested))
	uploads, err := client.ListMultipartUploads(b.ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String("atelier")})
	require.NoError(t, err)
	require.Empty(t, uploads.Uploads, "the refused upload was aborted")

	// Overwrite replaces unconditionally.
	before := conditional.Load()
	s3Put(t, b, contested, data, filestore.Overwrite())
	require.Equal(t, before, conditional.Load(), "no condition with Overwrite")
	require.Equal(t, data, s3Read(t, b, contested))
}
