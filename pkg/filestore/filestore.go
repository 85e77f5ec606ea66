// Package filestore stores participants' input, output and temp files on
// mello.
//
// This package is the vocabulary every side shares: the Store interface,
// names (Ref, Kind) and their validation, and the errors. The stores
// themselves are in subpackages, so that what only talks about files (the
// GPU agent, the sending side of pkg/filetransfer) links neither:
// diskstore on mello's data directory, s3store on an S3-compatible bucket,
// and storeconfig, which picks one from the binaries' flags. Every Ref that
// enters a Store is validated here (see ValidateName, CleanSubfolder): this
// package is the security boundary that keeps one participant's request
// from reaching another participant's files or anything outside the data
// directory.
package filestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Sentinel errors. Match them with errors.Is; the returned errors wrap them
// with what failed.
var (
	// ErrInvalidName reports a user id, kind, subfolder or file name that is
	// not allowed (traversal, separators, NUL, a symlink along the path…).
	ErrInvalidName = errors.New("invalid file name")
	// ErrNotFound reports a file (or directory) that does not exist.
	ErrNotFound = errors.New("file not found")
	// ErrExists reports that Commit would replace an existing file and the
	// writer was not created with Overwrite.
	ErrExists = errors.New("file already exists")
	// ErrChecksumMismatch reports content whose size or sha256 differs from
	// what the caller expected. Nothing is stored.
	ErrChecksumMismatch = errors.New("checksum mismatch")
	// ErrClosed reports use of a Writer after Commit or Abort.
	ErrClosed = errors.New("writer already committed or aborted")
)

// Kind is one of a participant's file folders, ComfyUI's "type".
type Kind string

// The kinds ComfyUI knows (the type parameter of /view and /upload/image).
const (
	KindInput  Kind = "input"
	KindOutput Kind = "output"
	KindTemp   Kind = "temp"
)

// ParseKind returns the Kind spelled s. ComfyUI's /view defaults an absent type
// to output; callers that want that default pass "output" themselves.
func ParseKind(s string) (Kind, error) {
	k := Kind(s)
	if err := k.Validate(); err != nil {
		return "", err
	}
	return k, nil
}

// Validate reports whether k is input, output or temp.
func (k Kind) Validate() error {
	switch k {
	case KindInput, KindOutput, KindTemp:
		return nil
	}
	return fmt.Errorf("%w: kind %q", ErrInvalidName, string(k))
}

// Ref names one file as the participant sees it in ComfyUI: the kind, a
// subfolder relative to that kind's folder and the file name. There is no
// "<user>/" prefix: User says whose folder it is.
type Ref struct {
	User      string `json:"user"`
	Kind      Kind   `json:"type"`
	Subfolder string `json:"subfolder"`
	Name      string `json:"filename"`
}

// String renders r for logs: "user007/output/sub/name.png".
func (r Ref) String() string {
	s := r.User + "/" + string(r.Kind) + "/"
	if r.Subfolder != "" {
		s += r.Subfolder + "/"
	}
	return s + r.Name
}

// Info describes a stored file.
type Info struct {
	Ref     Ref       `json:"ref"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
	// SHA256 is the lowercase hex sha256 of the content, or "" when the store
	// does not know it without reading the file (see SHA256Of).
	SHA256 string `json:"sha256,omitempty"`
}

// ETag returns an HTTP entity tag for the content: strong and derived from the
// sha256 when it is known, weak and derived from size and modification time
// otherwise.
func (i Info) ETag() string {
	if i.SHA256 != "" {
		return `"sha256-` + i.SHA256 + `"`
	}
	return `W/"` + strconv.FormatInt(i.Size, 16) + "-" + strconv.FormatInt(i.ModTime.UnixNano(), 16) + `"`
}

// File is an open stored file: enough for http.ServeContent (Seek gives Range
// support) plus the Info for ETag and Last-Modified.
type File interface {
	io.ReadSeekCloser
	io.ReaderAt
	// Info describes the file as it was when it was opened.
	Info() Info
}

// Writer streams a new file into the store. Nothing is visible under the
// file's name until Commit succeeds; Abort (or a failed Commit) leaves no
// trace. Exactly one of Commit or Abort must be called; Abort after Commit is
// a no-op, so `defer w.Abort()` is the idiom.
type Writer interface {
	io.Writer
	// Written is the number of bytes written so far.
	Written() int64
	// Commit verifies the content against expectedSHA256 (lowercase or
	// uppercase hex; "" skips the check) and the size given with ExpectSize,
	// makes the data durable and publishes it under the Ref's name atomically.
	// On ErrChecksumMismatch or ErrExists nothing is stored.
	Commit(ctx context.Context, expectedSHA256 string) (Info, error)
	// Abort discards the data written so far.
	Abort() error
}

// Store is where participants' files live. Implementations validate every Ref
// and must be safe for concurrent use.
type Store interface {
	// Open opens a regular file for reading. ErrNotFound if it does not exist.
	Open(ctx context.Context, ref Ref) (File, error)
	// Create starts writing a new file; see Writer.
	Create(ctx context.Context, ref Ref, opts ...CreateOption) (Writer, error)
	// Stat describes a regular file. ErrNotFound if it does not exist.
	Stat(ctx context.Context, ref Ref) (Info, error)
	// List describes the regular files directly in a folder, sorted by name.
	// Subdirectories, hidden files and links are left out. A folder that does
	// not exist lists as empty.
	List(ctx context.Context, user string, kind Kind, subfolder string) ([]Info, error)
	// Remove deletes a file. ErrNotFound if it does not exist.
	Remove(ctx context.Context, ref Ref) error
}

// Importer is implemented by stores that can take over a complete local file
// without copying it (diskstore renames it). Callers such as pkg/filetransfer fall
// back to Create and io.Copy when a Store does not implement it.
type Importer interface {
	// Import moves the file at path into the store under ref. The caller
	// vouches that the file's content has the given sha256 (already verified
	// while receiving it); path is gone after a successful Import.
	Import(ctx context.Context, ref Ref, path string, sha256 string, opts ...CreateOption) (Info, error)
}

// CreateOption configures Create and Import.
type CreateOption func(*CreateOptions)

// CreateOptions is what a Create or Import was asked for (the stores read
// it with NewCreateOptions).
type CreateOptions struct {
	// Overwrite lets Commit replace an existing file.
	Overwrite bool
	// ExpectedSize is the size Commit insists on; -1: any.
	ExpectedSize int64
}

// NewCreateOptions applies opts to the defaults (no overwrite, any size).
func NewCreateOptions(opts []CreateOption) CreateOptions {
	o := CreateOptions{ExpectedSize: -1}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Overwrite lets Commit replace an existing file of the same name (ComfyUI's
// upload with overwrite=true). Without it Commit fails with ErrExists.
func Overwrite() CreateOption { return func(o *CreateOptions) { o.Overwrite = true } }

// ExpectSize makes Commit fail with ErrChecksumMismatch unless exactly n bytes
// were written.
func ExpectSize(n int64) CreateOption { return func(o *CreateOptions) { o.ExpectedSize = n } }
