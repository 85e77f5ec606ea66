package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

type cacheBundle struct {
	c       *inputCache
	dir     string
	fetches atomic.Int32
	evicted []string
	mu      sync.Mutex
}

func setupCache(t *testing.T, dir string, max int64) *cacheBundle {
	t.Helper()
	c, err := openInputCache(dir, max, zerolog.Nop())
	require.NoError(t, err)
	cb := &cacheBundle{c: c, dir: dir}
	c.onEvict = func(sha string) { cb.mu.Lock(); cb.evicted = append(cb.evicted, sha); cb.mu.Unlock() }
	return cb
}

// content is n bytes named by their sha256.
func content(b byte, n int) (string, []byte) {
	data := make([]byte, n)
	for i := range data {
		data[i] = b
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), data
}

func (cb *cacheBundle) get(t *testing.T, sha string, data []byte) (string, func()) {
	t.Helper()
	path, release, err := cb.c.acquire(t.Context(), sha, int64(len(data)), func(_ context.Context, dst string) error {
		cb.fetches.Add(1)
		return os.WriteFile(dst, data, 0o600)
	})
	require.NoError(t, err)
	return path, release
}

// The cache fetches a content once however many ask at once, keeps at most
// its cap, evicting the least recently used content no job holds together
// with the links it placed into ComfyUI's folder, and an agent started
// later finds what is left (in the same use order).
func TestInputCacheEvictsLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cb := setupCache(t, filepath.Join(dir, "cache"), 2500)
	shaA, a := content('a', 1000)
	shaB, b := content('b', 1000)
	shaC, c := content('c', 1000)

	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, release := cb.get(t, shaA, a)
			release()
		}()
	}
	wg.Wait()
	require.EqualValues(t, 1, cb.fetches.Load(), "fetched once")

	_, relB := cb.get(t, shaB, b)
	relB()
	placed := filepath.Join(dir, "comfy", "input", "user001", "a.png")
	_, relA := cb.get(t, shaA, a) // A is now the most recently used
	require.NoError(t, cb.c.place(shaA, placed))
	relA()
	placedB := filepath.Join(dir, "comfy", "input", "user002", "b.png")
	_, relB = cb.get(t, shaB, b)
	require.NoError(t, cb.c.place(shaB, placedB))
	relB()
	// A was used before B: C pushes the cache over 2500 and A goes.
	_, relC := cb.get(t, shaC, c)
	require.Equal(t, []string{shaA}, cb.evicted)
	require.NoFileExists(t, filepath.Join(cb.dir, shaA))
	require.NoFileExists(t, placed, "the link placed from the evicted content went with it")
	require.FileExists(t, placedB)
	require.EqualValues(t, 2000, cb.c.Bytes())

	// What a job holds is not evicted, even over the cap.
	_, relA = cb.get(t, shaA, a) // fetched again: 3000 > 2500, B is the only one free
	require.EqualValues(t, 4, cb.fetches.Load())
	require.Equal(t, []string{shaA, shaB}, cb.evicted)
	require.NoFileExists(t, placedB)
	relC()
	relA()

	// A new agent on the same folder: A and C, C the older.
	cb2 := setupCache(t, cb.dir, 1500)
	require.EqualValues(t, 1000, cb2.c.Bytes(), "over its cap at start: the least recently used went")
	require.FileExists(t, filepath.Join(cb.dir, shaA))
	require.NoFileExists(t, filepath.Join(cb.dir, shaC))
	_, rel := cb2.get(t, shaA, a)
	rel()
	require.Zero(t, cb2.fetches.Load(), "found on disk after the restart")
}

// A fetch that fails leaves its part file counted (a later fetch resumes
// from it) and evictable; a file of the wrong size is refused.
func TestInputCacheFailedFetch(t *testing.T) {
	t.Parallel()
	cb := setupCache(t, t.TempDir(), 1500)
	sha, data := content('x', 1000)
	_, _, err := cb.c.acquire(t.Context(), sha, 1000, func(_ context.Context, dst string) error {
		require.NoError(t, os.WriteFile(dst+"."+sha[:16]+".part", data[:600], 0o600))
		return errors.New("connection lost")
	})
	require.Error(t, err)
	require.EqualValues(t, 600, cb.c.Bytes())
	_, _, err = cb.c.acquire(t.Context(), sha, 1000, func(_ context.Context, dst string) error {
		return os.WriteFile(dst, data[:999], 0o600)
	})
	require.ErrorContains(t, err, "the manifest says 1000")
	// Another content over the cap: the part file is evicted first.
	other, od := content('y', 1000)
	_, rel := cb.get(t, other, od)
	rel()
	require.EqualValues(t, 1000, cb.c.Bytes())

}

// Placing into a folder on another file system (no hard link possible)
// copies the content; a file of the same name with other content gives
// way, and placing again leaves no temporary file behind.
func TestInputCachePlaceAcrossFileSystems(t *testing.T) {
	t.Parallel()
	cb := setupCache(t, t.TempDir(), 0)
	other, err := os.MkdirTemp("/dev/shm", "atelier-place-")
	if err != nil {
		t.Skip("no /dev/shm to place into")
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	a, _ := os.Stat(cb.dir)
	b, _ := os.Stat(other)
	if fileIdentityDev(a) == fileIdentityDev(b) {
		t.Skip("/dev/shm is on the same file system here")
	}
	sha, data := content('z', 4096)
	src, rel := cb.get(t, sha, data)
	defer rel()
	dst := filepath.Join(other, "user001", "z.png")
	require.NoError(t, os.MkdirAll(filepath.Dir(dst), 0o755))
	require.NoError(t, os.WriteFile(dst, []byte("an older upload of the same name"), 0o644))
	require.NoError(t, cb.c.place(sha, dst))
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.Equal(t, data, got)
	s1, _ := os.Stat(src)
	s2, _ := os.Stat(dst)
	require.False(t, os.SameFile(s1, s2), "a copy, not a link")
	require.NoError(t, cb.c.place(sha, dst))
	leftovers, _ := filepath.Glob(filepath.Join(other, "user001", "*.tmp"))
	require.Empty(t, leftovers)
}

func fileIdentityDev(fi os.FileInfo) uint64 {
	id, _ := fileIdentity(fi)
	return id.dev
}
