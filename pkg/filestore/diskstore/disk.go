package diskstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
)

const (
	dirPerm  os.FileMode = 0o750
	filePerm os.FileMode = 0o640

	// tmpPrefix starts the names of files being written. ValidateName refuses
	// names starting with '.', so no Ref can reach a temporary file, and List
	// skips them.
	tmpPrefix = ".atelier-tmp-"

	xattrSHA256 = "user.atelier.sha256"
)

// Store is the filestore.Store on mello's data directory: a file lives at
// data/instances/<user>/<kind>/<subfolder>/<name>.
//
// Every access walks the path one directory at a time through os.Root
// handles, refusing any component that is a symlink and checking that the
// directory opened is the one that was inspected. os.Root alone would follow
// a link that stays inside data/instances, say from one participant's output
// folder into another's; the walk refuses links altogether. The
// participants' ComfyUI containers can write into these folders, so this is
// not hypothetical.
type Store struct {
	layout datalayout.Layout
}

var (
	_ filestore.Store    = (*Store)(nil)
	_ filestore.Importer = (*Store)(nil)
)

// New returns the Store for layout. Directories are created on demand by
// Create and Import.
func New(layout datalayout.Layout) *Store { return &Store{layout: layout} }

// Open implements filestore.Store.
func (d *Store) Open(ctx context.Context, ref filestore.Ref) (filestore.File, error) {
	ref, dir, err := d.openDir(ctx, ref, false)
	if err != nil {
		return nil, fmt.Errorf("filestore: open %s: %w", ref, err)
	}
	defer dir.Close()
	f, fi, err := openRegular(dir, ref.Name)
	if err != nil {
		return nil, fmt.Errorf("filestore: open %s: %w", ref, err)
	}
	return &diskFile{File: f, info: infoOf(ref, f, fi)}, nil
}

// Stat implements filestore.Store.
func (d *Store) Stat(ctx context.Context, ref filestore.Ref) (filestore.Info, error) {
	f, err := d.Open(ctx, ref)
	if err != nil {
		return filestore.Info{}, err
	}
	defer f.Close()
	return f.Info(), nil
}

// List implements filestore.Store.
func (d *Store) List(ctx context.Context, user string, kind filestore.Kind, subfolder string) ([]filestore.Info, error) {
	// Validate with a placeholder name: List has no file name of its own.
	ref := filestore.Ref{User: user, Kind: kind, Subfolder: subfolder, Name: "x"}
	ref, dir, err := d.openDir(ctx, ref, false)
	if errors.Is(err, filestore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("filestore: list %s/%s/%s: %w", user, kind, subfolder, err)
	}
	defer dir.Close()
	f, err := dir.Open(".")
	if err != nil {
		return nil, fmt.Errorf("filestore: list %s/%s/%s: %w", user, kind, subfolder, err)
	}
	defer f.Close()
	entries, err := f.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("filestore: list %s/%s/%s: %w", user, kind, subfolder, err)
	}
	infos := make([]filestore.Info, 0, len(entries))
	for _, e := range entries {
		if !e.Type().IsRegular() || filestore.ValidateName(e.Name()) != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		r := ref
		r.Name = e.Name()
		infos = append(infos, filestore.Info{Ref: r, Size: fi.Size(), ModTime: fi.ModTime()})
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Ref.Name < infos[j].Ref.Name })
	return infos, nil
}

// Remove implements filestore.Store.
func (d *Store) Remove(ctx context.Context, ref filestore.Ref) error {
	ref, dir, err := d.openDir(ctx, ref, false)
	if err != nil {
		return fmt.Errorf("filestore: remove %s: %w", ref, err)
	}
	defer dir.Close()
	fi, err := dir.Lstat(ref.Name)
	if err != nil {
		return fmt.Errorf("filestore: remove %s: %w", ref, mapNotExist(err))
	}
	if fi.IsDir() {
		return fmt.Errorf("filestore: remove %s: %w: is a directory", ref, filestore.ErrNotFound)
	}
	// Removing a link removes the link, never its target.
	if err := dir.Remove(ref.Name); err != nil {
		return fmt.Errorf("filestore: remove %s: %w", ref, mapNotExist(err))
	}
	return nil
}

// Create implements filestore.Store. The data goes to a hidden temporary file in the
// destination folder, so Commit is a rename within one directory.
func (d *Store) Create(ctx context.Context, ref filestore.Ref, opts ...filestore.CreateOption) (filestore.Writer, error) {
	ref, dir, err := d.openDir(ctx, ref, true)
	if err != nil {
		return nil, fmt.Errorf("filestore: create %s: %w", ref, err)
	}
	tmp, f, err := createTemp(dir)
	if err != nil {
		dir.Close()
		return nil, fmt.Errorf("filestore: create %s: %w", ref, err)
	}
	return &diskWriter{ref: ref, dir: dir, tmp: tmp, f: f, h: sha256.New(), opts: filestore.NewCreateOptions(opts)}, nil
}

// Import implements filestore.Importer: the file is renamed into place when path is on
// the same file system as the store, and copied otherwise.
func (d *Store) Import(ctx context.Context, ref filestore.Ref, path string, sum string, opts ...filestore.CreateOption) (filestore.Info, error) {
	o := filestore.NewCreateOptions(opts)
	ref, dir, err := d.openDir(ctx, ref, true)
	if err != nil {
		return filestore.Info{}, fmt.Errorf("filestore: import %s: %w", ref, err)
	}
	defer dir.Close()
	sum = strings.ToLower(sum)
	if _, err := hex.DecodeString(sum); err != nil || len(sum) != sha256.Size*2 {
		return filestore.Info{}, fmt.Errorf("filestore: import %s: %w: bad sha256 %q", ref, filestore.ErrChecksumMismatch, sum)
	}

	tmp := tmpPrefix + randomSuffix()
	if err := renameInto(path, dir, tmp); err != nil {
		// Different file systems (or no renameat): copy instead.
		w, err := d.Create(ctx, ref, opts...)
		if err != nil {
			return filestore.Info{}, err
		}
		defer w.Abort()
		src, err := os.Open(path)
		if err != nil {
			return filestore.Info{}, fmt.Errorf("filestore: import %s: %w", ref, err)
		}
		_, err = io.Copy(w, src)
		src.Close()
		if err != nil {
			return filestore.Info{}, fmt.Errorf("filestore: import %s: copy: %w", ref, err)
		}
		info, err := w.Commit(ctx, sum)
		if err != nil {
			return filestore.Info{}, err
		}
		_ = os.Remove(path)
		return info, nil
	}

	f, err := dir.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		_ = renameOut(dir, tmp, path)
		return filestore.Info{}, fmt.Errorf("filestore: import %s: %w", ref, err)
	}
	info, err := finish(ctx, dir, tmp, f, ref, sum, o)
	if err != nil {
		// Give the file back so the caller can retry under another name.
		if rerr := renameOut(dir, tmp, path); rerr != nil {
			_ = dir.Remove(tmp)
		}
		return filestore.Info{}, fmt.Errorf("filestore: import %s: %w", ref, err)
	}
	return info, nil
}

// openDir validates ref and opens the directory that holds ref.Name, walking
// instances/<user>/<kind>/<subfolder...> without following links. With
// create, missing directories are made. It returns ref with a canonical
// subfolder.
func (d *Store) openDir(ctx context.Context, ref filestore.Ref, create bool) (filestore.Ref, *os.Root, error) {
	if err := ctx.Err(); err != nil {
		return ref, nil, err
	}
	ref, err := ref.Validate()
	if err != nil {
		return ref, nil, err
	}
	base := d.layout.InstancesDir()
	if create {
		if err := os.MkdirAll(base, dirPerm); err != nil {
			return ref, nil, err
		}
	}
	cur, err := os.OpenRoot(base)
	if err != nil {
		return ref, nil, mapNotExist(err)
	}
	comps := []string{ref.User, string(ref.Kind)}
	if ref.Subfolder != "" {
		comps = append(comps, strings.Split(ref.Subfolder, "/")...)
	}
	for _, c := range comps {
		next, err := openChildDir(cur, c, create)
		cur.Close()
		if err != nil {
			return ref, nil, err
		}
		cur = next
	}
	return ref, cur, nil
}

// openChildDir opens the directory name inside r, refusing links: Lstat
// says what is there, and the opened directory must be that same directory,
// so a swap between the two calls is detected.
func openChildDir(r *os.Root, name string, create bool) (*os.Root, error) {
	fi, err := r.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) && create {
		if err := r.Mkdir(name, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		fi, err = r.Lstat(name)
	}
	if err != nil {
		return nil, mapNotExist(err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("%w: %s is a symlink", filestore.ErrInvalidName, name)
	}
	if !fi.IsDir() {
		if create {
			return nil, fmt.Errorf("%w: %s is not a directory", filestore.ErrInvalidName, name)
		}
		return nil, fmt.Errorf("%w: %s is not a directory", filestore.ErrNotFound, name)
	}
	child, err := r.OpenRoot(name)
	if err != nil {
		return nil, mapNotExist(err)
	}
	cfi, err := child.Stat(".")
	if err != nil || !os.SameFile(fi, cfi) {
		child.Close()
		return nil, fmt.Errorf("%w: %s changed while being opened", filestore.ErrInvalidName, name)
	}
	return child, nil
}

// openRegular opens a regular file in dir without following a link.
func openRegular(dir *os.Root, name string) (*os.File, fs.FileInfo, error) {
	fi, err := dir.Lstat(name)
	if err != nil {
		return nil, nil, mapNotExist(err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil, nil, fmt.Errorf("%w: %s is a symlink", filestore.ErrInvalidName, name)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%w: %s is not a regular file", filestore.ErrNotFound, name)
	}
	f, err := dir.Open(name)
	if err != nil {
		return nil, nil, mapNotExist(err)
	}
	ffi, err := f.Stat()
	if err != nil || !os.SameFile(fi, ffi) {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %s changed while being opened", filestore.ErrInvalidName, name)
	}
	return f, ffi, nil
}

func mapNotExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", filestore.ErrNotFound, err)
	}
	return err
}

func randomSuffix() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func createTemp(dir *os.Root) (string, *os.File, error) {
	for range 10 {
		name := tmpPrefix + randomSuffix()
		f, err := dir.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return name, f, err
	}
	return "", nil, errors.New("cannot create a temporary file")
}

// sumStamp is what the sha256 xattr holds: the sum and the size and mtime it
// was computed for, so a file changed in place (by the participant's ComfyUI)
// is not served with a stale sum.
func sumStamp(sum string, fi fs.FileInfo) []byte {
	return []byte("v1 " + sum + " " + strconv.FormatInt(fi.Size(), 10) + " " + strconv.FormatInt(fi.ModTime().UnixNano(), 10))
}

func infoOf(ref filestore.Ref, f *os.File, fi fs.FileInfo) filestore.Info {
	info := filestore.Info{Ref: ref, Size: fi.Size(), ModTime: fi.ModTime()}
	var buf [128]byte
	n, err := fgetxattr(f, xattrSHA256, buf[:])
	if err != nil {
		return info
	}
	fields := strings.Fields(string(buf[:n]))
	if len(fields) == 4 && fields[0] == "v1" && bytes.Equal(sumStamp(fields[1], fi), buf[:n]) {
		info.SHA256 = fields[1]
	}
	return info
}

// finish publishes the temporary file tmp (open as f) under ref.Name: check
// the size, record the sum, fsync, link or rename, fsync the directory. It
// always closes f. On success tmp is gone; on failure it is left to the
// caller (Import moves it back, a Writer removes it).
func finish(ctx context.Context, dir *os.Root, tmp string, f *os.File, ref filestore.Ref, sum string, o filestore.CreateOptions) (filestore.Info, error) {
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return filestore.Info{}, err
	}
	if o.ExpectedSize >= 0 && fi.Size() != o.ExpectedSize {
		return filestore.Info{}, fmt.Errorf("%w: size %d, want %d", filestore.ErrChecksumMismatch, fi.Size(), o.ExpectedSize)
	}
	// Best effort: without xattr support the sum is simply unknown later.
	_ = fsetxattr(f, xattrSHA256, sumStamp(sum, fi))
	if err := f.Sync(); err != nil {
		return filestore.Info{}, fmt.Errorf("sync: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return filestore.Info{}, err
	}
	if o.Overwrite {
		if err := dir.Rename(tmp, ref.Name); err != nil {
			return filestore.Info{}, fmt.Errorf("rename: %w", err)
		}
	} else {
		// link(2) fails if the name exists: an atomic "create if absent".
		if err := dir.Link(tmp, ref.Name); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return filestore.Info{}, filestore.ErrExists
			}
			return filestore.Info{}, fmt.Errorf("link: %w", err)
		}
		_ = dir.Remove(tmp)
	}
	if df, err := dir.Open("."); err == nil {
		_ = df.Sync()
		df.Close()
	}
	return filestore.Info{Ref: ref, Size: fi.Size(), ModTime: fi.ModTime(), SHA256: sum}, nil
}

type diskFile struct {
	*os.File
	info filestore.Info
}

func (f *diskFile) Info() filestore.Info { return f.info }

type diskWriter struct {
	ref  filestore.Ref
	dir  *os.Root
	tmp  string
	f    *os.File
	h    hash.Hash
	n    int64
	opts filestore.CreateOptions
	done bool
	err  error
}

func (w *diskWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, filestore.ErrClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		w.err = fmt.Errorf("filestore: write %s: %w", w.ref, err)
		return n, w.err
	}
	return n, nil
}

func (w *diskWriter) Written() int64 { return w.n }

func (w *diskWriter) Commit(ctx context.Context, expectedSHA256 string) (filestore.Info, error) {
	if w.done {
		return filestore.Info{}, filestore.ErrClosed
	}
	w.done = true
	defer w.dir.Close()
	if w.err != nil {
		w.f.Close()
		_ = w.dir.Remove(w.tmp)
		return filestore.Info{}, w.err
	}
	sum := hex.EncodeToString(w.h.Sum(nil))
	if expectedSHA256 != "" && !strings.EqualFold(sum, expectedSHA256) {
		w.f.Close()
		_ = w.dir.Remove(w.tmp)
		return filestore.Info{}, fmt.Errorf("filestore: commit %s: %w: sha256 %s, want %s", w.ref, filestore.ErrChecksumMismatch, sum, expectedSHA256)
	}
	info, err := finish(ctx, w.dir, w.tmp, w.f, w.ref, sum, w.opts)
	if err != nil {
		_ = w.dir.Remove(w.tmp)
		return filestore.Info{}, fmt.Errorf("filestore: commit %s: %w", w.ref, err)
	}
	return info, nil
}

func (w *diskWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.f.Close()
	err := w.dir.Remove(w.tmp)
	w.dir.Close()
	return err
}
