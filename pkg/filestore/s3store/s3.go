package s3store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
)

// metaSHA256 is the object metadata key (x-amz-meta-atelier-sha256) that
// carries the verified sha256 of the content, so ETags stay strong without
// reading the object.
const metaSHA256 = "atelier-sha256"

// MinPartSize is S3's smallest multipart part (except the last).
const MinPartSize = 5 << 20

// Config configures an S3 store.
type Config struct {
	// Client talks to the S3-compatible service (AWS, R2, MinIO…).
	// Required. Create it with path-style addressing for most non-AWS
	// services, and with RequestChecksumCalculation "when required" for
	// services that do not understand the SDK's default trailing checksums.
	Client *s3.Client
	// Bucket holds the files. Required.
	Bucket string
	// Prefix is put before every key, e.g. "atelier/"; "" or ending in '/'.
	// Keys are <Prefix><user>/<kind>/<subfolder>/<name>, the layout of
	// instances/ on mello's disk.
	Prefix string
	// PartSize is the multipart part size and so the memory each Writer
	// holds. Files up to PartSize go up in one PutObject. Default 16 MiB,
	// at least MinPartSize. (S3 allows 10,000 parts: 156 GiB at 16 MiB.)
	PartSize int64
}

// Store is the filestore.Store on an S3-compatible bucket, for deployments beyond one
// mello. Names are validated exactly as diskstore validates them (Ref.Validate);
// there are no links in a bucket, and "..", empty or hidden segments never
// reach a key.
//
// Create streams through a multipart upload, holding one part in memory;
// Open returns a File whose reads are ranged GETs, so http.ServeContent
// answers Range requests without downloading the object.
type Store struct {
	cfg Config
}

var (
	_ filestore.Store  = (*Store)(nil)
	_ filestore.Walker = (*Store)(nil)
)

// New validates cfg.
func New(cfg Config) (*Store, error) {
	if cfg.Client == nil || cfg.Bucket == "" {
		return nil, errors.New("s3store: Config.Client and Bucket are required")
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("s3store: Config.Prefix %q must end in '/'", cfg.Prefix)
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = 16 << 20
	}
	if cfg.PartSize < MinPartSize {
		return nil, fmt.Errorf("s3store: Config.PartSize %d below S3's minimum %d", cfg.PartSize, MinPartSize)
	}
	return &Store{cfg: cfg}, nil
}

func (s *Store) key(ref filestore.Ref) string {
	k := s.cfg.Prefix + ref.User + "/" + string(ref.Kind) + "/"
	if ref.Subfolder != "" {
		k += ref.Subfolder + "/"
	}
	return k + ref.Name
}

// isNotFound recognises the ways S3 services say "no such object".
func isNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nsk) || errors.As(err, &nf) {
		return true
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NotFound", "NoSuchKey", "404":
			return true
		}
	}
	return false
}

func mapS3(err error) error {
	if isNotFound(err) {
		return fmt.Errorf("%w: %w", filestore.ErrNotFound, err)
	}
	return err
}

func (s *Store) head(ctx context.Context, ref filestore.Ref) (filestore.Info, error) {
	out, err := s.cfg.Client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(ref))})
	if err != nil {
		return filestore.Info{}, mapS3(err)
	}
	info := filestore.Info{Ref: ref, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}
	if sum := strings.ToLower(out.Metadata[metaSHA256]); validHexSHA256(sum) {
		info.SHA256 = sum
	}
	return info, nil
}

func validHexSHA256(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && len(s) == sha256.Size*2
}

// Stat implements filestore.Store.
func (s *Store) Stat(ctx context.Context, ref filestore.Ref) (filestore.Info, error) {
	ref, err := ref.Validate()
	if err != nil {
		return filestore.Info{}, fmt.Errorf("filestore: stat %s: %w", ref, err)
	}
	info, err := s.head(ctx, ref)
	if err != nil {
		return filestore.Info{}, fmt.Errorf("filestore: stat %s: %w", ref, err)
	}
	return info, nil
}

// Open implements filestore.Store.
func (s *Store) Open(ctx context.Context, ref filestore.Ref) (filestore.File, error) {
	ref, err := ref.Validate()
	if err != nil {
		return nil, fmt.Errorf("filestore: open %s: %w", ref, err)
	}
	info, err := s.head(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("filestore: open %s: %w", ref, err)
	}
	return &s3File{s: s, ctx: ctx, key: s.key(ref), info: info}, nil
}

// List implements filestore.Store.
func (s *Store) List(ctx context.Context, user string, kind filestore.Kind, subfolder string) ([]filestore.Info, error) {
	ref, err := filestore.Ref{User: user, Kind: kind, Subfolder: subfolder, Name: "x"}.Validate()
	if err != nil {
		return nil, fmt.Errorf("filestore: list %s/%s/%s: %w", user, kind, subfolder, err)
	}
	prefix := strings.TrimSuffix(s.key(ref), "x")
	var infos []filestore.Info
	err = s.list(ctx, prefix, "/", func(o types.Object) {
		r := ref
		r.Name = strings.TrimPrefix(aws.ToString(o.Key), prefix)
		if filestore.ValidateName(r.Name) == nil {
			infos = append(infos, filestore.Info{Ref: r, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)})
		}
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("filestore: list %s/%s/%s: %w", user, kind, subfolder, err)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Ref.Name < infos[j].Ref.Name })
	return infos, nil
}

// list pages through ListObjectsV2.
func (s *Store) list(ctx context.Context, prefix, delimiter string, obj func(types.Object), dir func(string)) error {
	in := &s3.ListObjectsV2Input{Bucket: &s.cfg.Bucket, Prefix: aws.String(prefix)}
	if delimiter != "" {
		in.Delimiter = aws.String(delimiter)
	}
	p := s3.NewListObjectsV2Paginator(s.cfg.Client, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return err
		}
		for _, o := range page.Contents {
			if obj != nil {
				obj(o)
			}
		}
		for _, cp := range page.CommonPrefixes {
			if dir != nil {
				dir(aws.ToString(cp.Prefix))
			}
		}
	}
	return nil
}

// Users implements filestore.Walker.
func (s *Store) Users(ctx context.Context) ([]string, error) {
	var users []string
	err := s.list(ctx, s.cfg.Prefix, "/", nil, func(p string) {
		u := strings.TrimSuffix(strings.TrimPrefix(p, s.cfg.Prefix), "/")
		if datalayout.ValidUserID(u) == nil {
			users = append(users, u)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("filestore: list users: %w", err)
	}
	sort.Strings(users)
	return users, nil
}

// Walk implements filestore.Walker. Keys that do not make a valid Ref (written by
// something else) are skipped.
func (s *Store) Walk(ctx context.Context, user string, kind filestore.Kind, fn func(filestore.Info) error) error {
	base, err := filestore.Ref{User: user, Kind: kind, Name: "x"}.Validate()
	if err != nil {
		return fmt.Errorf("filestore: walk %s/%s: %w", user, kind, err)
	}
	prefix := strings.TrimSuffix(s.key(base), "x")
	var fnErr error
	err = s.list(ctx, prefix, "", func(o types.Object) {
		if fnErr != nil {
			return
		}
		rel := strings.TrimPrefix(aws.ToString(o.Key), prefix)
		r := base
		r.Name = rel
		if i := strings.LastIndexByte(rel, '/'); i >= 0 {
			r.Subfolder, r.Name = rel[:i], rel[i+1:]
		}
		r, err := r.Validate()
		if err != nil || s.key(r) != aws.ToString(o.Key) {
			return // not a name a Ref can have (or not this one: "a//b")
		}
		fnErr = fn(filestore.Info{Ref: r, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)})
	}, nil)
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("filestore: walk %s/%s: %w", user, kind, err)
	}
	return nil
}

// Remove implements filestore.Store.
func (s *Store) Remove(ctx context.Context, ref filestore.Ref) error {
	ref, err := ref.Validate()
	if err != nil {
		return fmt.Errorf("filestore: remove %s: %w", ref, err)
	}
	// DeleteObject succeeds on a missing key; the Store contract wants
	// ErrNotFound.
	if _, err := s.head(ctx, ref); err != nil {
		return fmt.Errorf("filestore: remove %s: %w", ref, err)
	}
	if _, err := s.cfg.Client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(ref))}); err != nil {
		return fmt.Errorf("filestore: remove %s: %w", ref, mapS3(err))
	}
	return nil
}

// Create implements filestore.Store. Nothing is visible under the key until Commit:
// a small file is one PutObject at Commit, a larger one a multipart upload
// that Commit completes (and Abort aborts). Without Overwrite, Commit checks
// that the key is free, then makes the write itself conditional
// (If-None-Match: *) on the PutObject or the CompleteMultipartUpload: an
// atomic "create if absent" on services that support conditional writes
// (AWS S3 since 2024, R2, MinIO). A service that ignores the condition
// leaves only the check, so two writers racing for the same new name
// there could both succeed (the later one wins); Atelier's writers of a
// given name are one receiver or one participant's uploads, so that race
// needs two uploads of different content to the same name at once.
func (s *Store) Create(ctx context.Context, ref filestore.Ref, opts ...filestore.CreateOption) (filestore.Writer, error) {
	ref, err := ref.Validate()
	if err != nil {
		return nil, fmt.Errorf("filestore: create %s: %w", ref, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &s3Writer{s: s, ctx: ctx, ref: ref, key: s.key(ref), h: sha256.New(), opts: filestore.NewCreateOptions(opts)}, nil
}

type s3Writer struct {
	s    *Store
	ctx  context.Context
	ref  filestore.Ref
	key  string
	h    hash.Hash
	opts filestore.CreateOptions

	buf      bytes.Buffer
	n        int64
	uploadID *string
	parts    []types.CompletedPart
	done     bool
	err      error
}

func (w *s3Writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, filestore.ErrClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	written := 0
	for len(p) > 0 {
		room := int(w.s.cfg.PartSize) - w.buf.Len()
		k := min(room, len(p))
		w.buf.Write(p[:k])
		w.h.Write(p[:k])
		w.n += int64(k)
		written += k
		p = p[k:]
		// Upload a full part only once more data follows: the last part
		// is sent by Commit, so a file of exactly PartSize is one PUT.
		if w.buf.Len() == int(w.s.cfg.PartSize) && len(p) > 0 {
			if err := w.flushPart(); err != nil {
				w.err = fmt.Errorf("filestore: write %s: %w", w.ref, err)
				return written, w.err
			}
		}
	}
	return written, nil
}

func (w *s3Writer) flushPart() error {
	c := w.s.cfg.Client
	if w.uploadID == nil {
		out, err := c.CreateMultipartUpload(w.ctx, &s3.CreateMultipartUploadInput{Bucket: &w.s.cfg.Bucket, Key: &w.key})
		if err != nil {
			return fmt.Errorf("create multipart upload: %w", err)
		}
		w.uploadID = out.UploadId
	}
	num := int32(len(w.parts) + 1)
	out, err := c.UploadPart(w.ctx, &s3.UploadPartInput{
		Bucket: &w.s.cfg.Bucket, Key: &w.key, UploadId: w.uploadID, PartNumber: aws.Int32(num),
		Body: bytes.NewReader(w.buf.Bytes()), ContentLength: aws.Int64(int64(w.buf.Len())),
	})
	if err != nil {
		return fmt.Errorf("upload part %d: %w", num, err)
	}
	w.parts = append(w.parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
	w.buf.Reset()
	return nil
}

func (w *s3Writer) Written() int64 { return w.n }

func (w *s3Writer) Commit(ctx context.Context, expectedSHA256 string) (filestore.Info, error) {
	if w.done {
		return filestore.Info{}, filestore.ErrClosed
	}
	w.done = true
	fail := func(err error) (filestore.Info, error) {
		w.abortUpload()
		return filestore.Info{}, fmt.Errorf("filestore: commit %s: %w", w.ref, err)
	}
	if w.err != nil {
		return fail(w.err)
	}
	sum := hex.EncodeToString(w.h.Sum(nil))
	if expectedSHA256 != "" && !strings.EqualFold(sum, expectedSHA256) {
		return fail(fmt.Errorf("%w: sha256 %s, want %s", filestore.ErrChecksumMismatch, sum, expectedSHA256))
	}
	if w.opts.ExpectedSize >= 0 && w.n != w.opts.ExpectedSize {
		return fail(fmt.Errorf("%w: size %d, want %d", filestore.ErrChecksumMismatch, w.n, w.opts.ExpectedSize))
	}
	if !w.opts.Overwrite {
		if _, err := w.s.head(ctx, w.ref); err == nil {
			return fail(filestore.ErrExists)
		} else if !errors.Is(err, filestore.ErrNotFound) {
			return fail(err)
		}
	}
	c := w.s.cfg.Client
	meta := map[string]string{metaSHA256: sum}
	if w.uploadID == nil {
		in := &s3.PutObjectInput{
			Bucket: &w.s.cfg.Bucket, Key: &w.key, Body: bytes.NewReader(w.buf.Bytes()),
			ContentLength: aws.Int64(int64(w.buf.Len())), Metadata: meta,
		}
		if !w.opts.Overwrite {
			// Conditional write: atomic "create if absent" where the
			// service supports it (AWS, R2, MinIO); the check above covers
			// the others.
			in.IfNoneMatch = aws.String("*")
		}
		if _, err := c.PutObject(ctx, in); err != nil {
			if preconditionFailed(err) {
				return fail(filestore.ErrExists)
			}
			return fail(err)
		}
	} else {
		if err := w.flushPart(); err != nil {
			return fail(err)
		}
		in := &s3.CompleteMultipartUploadInput{
			Bucket: &w.s.cfg.Bucket, Key: &w.key, UploadId: w.uploadID,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: w.parts},
		}
		if !w.opts.Overwrite {
			in.IfNoneMatch = aws.String("*") // as for PutObject above
		}
		if _, err := c.CompleteMultipartUpload(ctx, in); err != nil {
			if preconditionFailed(err) {
				return fail(filestore.ErrExists)
			}
			return fail(err)
		}
		// Multipart uploads take their metadata at creation, before the
		// sum is known: set it with a metadata-only self-copy. S3 copies
		// up to 5 GB this way; beyond, the sum stays unknown (weak ETag).
		if w.n <= 5<<30 {
			_, _ = c.CopyObject(ctx, &s3.CopyObjectInput{
				Bucket: &w.s.cfg.Bucket, Key: &w.key, CopySource: aws.String(w.s.cfg.Bucket + "/" + w.key),
				Metadata: meta, MetadataDirective: types.MetadataDirectiveReplace,
			})
		}
	}
	w.buf = bytes.Buffer{}
	info, err := w.s.head(ctx, w.ref)
	if err != nil {
		return filestore.Info{}, fmt.Errorf("filestore: commit %s: %w", w.ref, err)
	}
	info.SHA256 = sum
	return info, nil
}

// preconditionFailed reports a conditional write refused because the key
// exists (HTTP 412).
func preconditionFailed(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && (ae.ErrorCode() == "PreconditionFailed" || ae.ErrorCode() == "412")
}

func (w *s3Writer) abortUpload() {
	w.buf = bytes.Buffer{}
	if w.uploadID == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), 30*time.Second)
	defer cancel()
	_, _ = w.s.cfg.Client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &w.s.cfg.Bucket, Key: &w.key, UploadId: w.uploadID})
	w.uploadID = nil
}

func (w *s3Writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.abortUpload()
	return nil
}

// s3File reads an object with ranged GETs: a sequential Read keeps one
// response body open from the current offset, a Seek drops it (so
// http.ServeContent's seek to the end and back costs nothing), ReadAt asks
// for exactly the range it needs.
type s3File struct {
	s    *Store
	ctx  context.Context
	key  string
	info filestore.Info

	mu     sync.Mutex
	off    int64
	body   io.ReadCloser
	closed bool
}

func (f *s3File) Info() filestore.Info { return f.info }

func (f *s3File) get(off, n int64) (io.ReadCloser, error) {
	rng := fmt.Sprintf("bytes=%d-", off)
	if n > 0 {
		rng = fmt.Sprintf("bytes=%d-%d", off, off+n-1)
	}
	out, err := f.s.cfg.Client.GetObject(f.ctx, &s3.GetObjectInput{Bucket: &f.s.cfg.Bucket, Key: &f.key, Range: aws.String(rng)})
	if err != nil {
		return nil, mapS3(err)
	}
	return out.Body, nil
}

func (f *s3File) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, filestore.ErrClosed
	}
	if f.off >= f.info.Size {
		return 0, io.EOF
	}
	if f.body == nil {
		body, err := f.get(f.off, 0)
		if err != nil {
			return 0, err
		}
		f.body = body
	}
	n, err := f.body.Read(p)
	f.off += int64(n)
	if errors.Is(err, io.EOF) {
		f.body.Close()
		f.body = nil
		if f.off < f.info.Size {
			err = io.ErrUnexpectedEOF
		}
	}
	return n, err
}

func (f *s3File) Seek(offset int64, whence int) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = f.off + offset
	case io.SeekEnd:
		abs = f.info.Size + offset
	default:
		return 0, errors.New("filestore: seek: bad whence")
	}
	if abs < 0 {
		return 0, errors.New("filestore: seek: negative position")
	}
	if abs != f.off && f.body != nil {
		f.body.Close()
		f.body = nil
	}
	f.off = abs
	return abs, nil
}

func (f *s3File) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.info.Size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), f.info.Size-off)
	body, err := f.get(off, n)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	got, err := io.ReadFull(body, p[:n])
	if err == nil && int64(len(p)) > n {
		err = io.EOF
	}
	return got, err
}

func (f *s3File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.body != nil {
		f.body.Close()
		f.body = nil
	}
	f.closed = true
	return nil
}
