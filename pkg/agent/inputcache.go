package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// inputCache is the box's content-addressed cache of participants' input
// files (<dir>/<sha256>): an input crosses the network once however many
// slots and jobs use it, and it survives an agent restart (it lives under
// the scratch root). A job holds the inputs it uses from staging to its
// end; the cache keeps at most max bytes (0: no limit), evicting the least
// recently used files no job holds. Inputs are placed into ComfyUI's input
// folder by hard link (a copy across file systems), so an eviction also
// removes the links it placed: a hard link would keep the space in use.
type inputCache struct {
	dir string
	max int64
	log zerolog.Logger
	// onEvict tells the slots that a content is gone from ComfyUI's
	// input folders (they stage it again next time).
	onEvict func(sha string)

	mu       sync.Mutex
	entries  map[string]*cacheEntry // by file name: <sha256> or a fetch's <sha256>.<…>.part
	total    int64
	fetching map[string]chan struct{} // sha256 → closed when that fetch ends
	placedBy map[string]string        // placed link → sha256 of its content
}

type cacheEntry struct {
	sha  string
	size int64
	used time.Time
	refs int             // jobs holding it
	part bool            // an unfinished fetch left by a stopped one (it resumes from it)
	link map[string]bool // links placed into ComfyUI input folders
}

// openInputCache opens (creating) the cache folder and takes stock of what
// an earlier run left there.
func openInputCache(dir string, max int64, log zerolog.Logger) (*inputCache, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("input cache: %w", err)
	}
	c := &inputCache{
		dir: dir, max: max, log: log,
		entries: map[string]*cacheEntry{}, fetching: map[string]chan struct{}{}, placedBy: map[string]string{},
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("input cache: %w", err)
	}
	for _, de := range des {
		name := de.Name()
		sha, part := cacheFileSHA(name)
		if sha == "" || !de.Type().IsRegular() {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		c.entries[name] = &cacheEntry{sha: sha, size: fi.Size(), used: fi.ModTime(), part: part}
		c.total += fi.Size()
	}
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
	return c, nil
}

// cacheFileSHA returns the content a cache file holds: "<sha>" (complete)
// or "<sha>.<prefix>.part" (a fetch under way or interrupted); "" for
// anything else.
func cacheFileSHA(name string) (sha string, part bool) {
	if isSHA256(name) {
		return name, false
	}
	if len(name) > 64 && isSHA256(name[:64]) && strings.HasSuffix(name, ".part") {
		return name[:64], true
	}
	return "", false
}

func isSHA256(s string) bool {
	return len(s) == 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// Bytes is the space the cache's files take (links into ComfyUI's input
// folders share it).
func (c *inputCache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// acquire returns the path of the content sha (size bytes), fetching it
// with fetch (which writes it to the path it is given) when the box does
// not have it, and holds it until release is called. Concurrent requests
// for the same content fetch once.
func (c *inputCache) acquire(ctx context.Context, sha string, size int64, fetch func(ctx context.Context, dst string) error) (path string, release func(), err error) {
	if !isSHA256(sha) {
		return "", nil, fmt.Errorf("bad sha256 %q in the manifest", sha)
	}
	path = filepath.Join(c.dir, sha)
	for {
		c.mu.Lock()
		if e := c.entries[sha]; e != nil {
			if st, err := os.Stat(path); err == nil && st.Size() == size {
				e.refs++
				used := time.Now()
				e.used = used
				c.mu.Unlock()
				// The modification time is the use time an agent started
				// later evicts by.
				_ = os.Chtimes(path, time.Time{}, used)
				return path, c.releaser(e), nil
			}
			c.dropLocked(sha) // gone or damaged: fetch it again
		}
		if wait := c.fetching[sha]; wait != nil {
			c.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return "", nil, ctx.Err()
			}
		}
		done := make(chan struct{})
		c.fetching[sha] = done
		c.mu.Unlock()

		err := fetch(ctx, path)
		if err == nil {
			_ = os.Chmod(path, 0o644) // ComfyUI may run as another user (a container)
		}
		st, serr := os.Stat(path)
		c.mu.Lock()
		delete(c.fetching, sha)
		close(done)
		if err == nil && serr != nil {
			err = serr
		}
		if err == nil && st.Size() != size {
			err = fmt.Errorf("fetched %d bytes, the manifest says %d", st.Size(), size)
			_ = os.Remove(path)
		}
		if err != nil {
			c.recountPartsLocked(sha)
			c.mu.Unlock()
			return "", nil, err
		}
		for name, e := range c.entries {
			if e.part && e.sha == sha { // the fetch resumed from it and renamed it
				c.total -= e.size
				delete(c.entries, name)
			}
		}
		e := &cacheEntry{sha: sha, size: st.Size(), used: time.Now(), refs: 1}
		c.entries[sha] = e
		c.total += e.size
		c.evictLocked()
		c.mu.Unlock()
		return path, c.releaser(e), nil
	}
}

// recountPartsLocked takes stock of the part files a failed fetch of sha
// left (a later fetch resumes from them; eviction may drop them).
func (c *inputCache) recountPartsLocked(sha string) {
	matches, _ := filepath.Glob(filepath.Join(c.dir, sha+".*.part"))
	for _, m := range matches {
		name := filepath.Base(m)
		st, err := os.Stat(m)
		if err != nil {
			continue
		}
		if old := c.entries[name]; old != nil {
			c.total -= old.size
		}
		c.entries[name] = &cacheEntry{sha: sha, size: st.Size(), used: time.Now(), part: true}
		c.total += st.Size()
	}
	c.evictLocked()
}

func (c *inputCache) releaser(e *cacheEntry) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			e.refs--
			e.used = time.Now()
			if c.entries[e.sha] == e {
				_ = os.Chtimes(filepath.Join(c.dir, e.sha), time.Time{}, e.used)
			}
			c.evictLocked()
			c.mu.Unlock()
		})
	}
}

// place makes dst (a file in a ComfyUI input folder) the content sha,
// which the caller holds: a hard link to the cache file, or a copy where
// dst is on another file system. dst is replaced atomically, so a file of
// the same name with other content (a participant's new upload) gives way.
func (c *inputCache) place(sha, dst string) error {
	src := filepath.Join(c.dir, sha)
	if a, err := os.Stat(src); err == nil {
		if b, err := os.Stat(dst); err == nil && os.SameFile(a, b) {
			c.notePlaced(sha, dst)
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.atelier-%d.tmp", dst, time.Now().UnixNano())
	if err := os.Link(src, tmp); err != nil {
		// Another file system (or one without hard links): copy.
		if err := copyFile(src, tmp); err != nil {
			_ = os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	c.notePlaced(sha, dst)
	return nil
}

func (c *inputCache) notePlaced(sha, dst string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.placedBy[dst]; ok && prev != sha {
		if e := c.entries[prev]; e != nil {
			delete(e.link, dst)
		}
	}
	c.placedBy[dst] = sha
	if e := c.entries[sha]; e != nil {
		if e.link == nil {
			e.link = map[string]bool{}
		}
		e.link[dst] = true
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// evictLocked removes the least recently used files no job holds (and
// no fetch writes) until the cache fits max.
func (c *inputCache) evictLocked() {
	if c.max <= 0 || c.total <= c.max {
		return
	}
	var victims []string
	for name, e := range c.entries {
		if e.refs == 0 && c.fetching[e.sha] == nil {
			victims = append(victims, name)
		}
	}
	sort.Slice(victims, func(i, j int) bool { return c.entries[victims[i]].used.Before(c.entries[victims[j]].used) })
	for _, name := range victims {
		if c.total <= c.max {
			break
		}
		e := c.entries[name]
		if err := os.Remove(filepath.Join(c.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn().Err(err).Str("file", name).Msg("evict input")
			continue
		}
		c.log.Debug().Str("sha256", e.sha).Int64("size", e.size).Msg("input evicted from the cache")
		c.forgetLocked(name, e)
	}
	if c.total > c.max {
		c.log.Warn().Int64("bytes", c.total).Int64("max", c.max).Msg("input cache over its size: the inputs of running jobs do not fit")
	}
}

// dropLocked forgets the complete file of sha (removed or damaged).
func (c *inputCache) dropLocked(sha string) {
	if e := c.entries[sha]; e != nil {
		_ = os.Remove(filepath.Join(c.dir, sha))
		c.forgetLocked(sha, e)
	}
}

// forgetLocked drops an entry and the links it placed into ComfyUI's
// input folders (the slots stage the content again when a job needs it).
func (c *inputCache) forgetLocked(name string, e *cacheEntry) {
	c.total -= e.size
	delete(c.entries, name)
	for dst := range e.link {
		if c.placedBy[dst] == e.sha {
			_ = os.Remove(dst)
			delete(c.placedBy, dst)
		}
	}
	if !e.part && c.onEvict != nil {
		c.onEvict(e.sha)
	}
}
