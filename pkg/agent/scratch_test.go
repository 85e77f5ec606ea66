package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Prepare creates the seed layout (inputs/<user>/, outputs/<user>/,
// temp/, the input cache) and makes a ComfyUI checkout's input/ and
// output/ links into it; it can run again on every boot, and it leaves a
// folder with files in it alone.
func TestScratchPrepare(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "scratch")
	comfy := filepath.Join(t.TempDir(), "ComfyUI")
	require.NoError(t, os.MkdirAll(filepath.Join(comfy, "input"), 0o755)) // a fresh checkout's empty folder
	sc := Scratch{Root: root}
	opts := PrepareOptions{Users: []string{"user001", "user002"}, ComfyUIDir: comfy}
	for range 2 {
		require.NoError(t, sc.Prepare(opts))
	}
	for _, d := range []string{"inputs/user001", "inputs/user002", "outputs/user001", "outputs/user002", "temp", "cache/inputs"} {
		require.DirExists(t, filepath.Join(root, d))
	}
	for link, target := range map[string]string{"input": sc.Inputs(), "output": sc.Outputs()} {
		got, err := os.Readlink(filepath.Join(comfy, link))
		require.NoError(t, err, link)
		require.Equal(t, target, got)
	}
	// A file written through the link lands in the scratch layout.
	require.NoError(t, os.WriteFile(filepath.Join(comfy, "output", "user001", "x.png"), []byte("x"), 0o644))
	require.FileExists(t, filepath.Join(root, "outputs", "user001", "x.png"))

	// A link pointing elsewhere is replaced; a folder with files is not.
	other := t.TempDir()
	require.NoError(t, os.Remove(filepath.Join(comfy, "input")))
	require.NoError(t, os.Symlink(other, filepath.Join(comfy, "input")))
	require.NoError(t, sc.Prepare(opts))
	got, _ := os.Readlink(filepath.Join(comfy, "input"))
	require.Equal(t, sc.Inputs(), got)
	require.NoError(t, os.Remove(filepath.Join(comfy, "output")))
	require.NoError(t, os.MkdirAll(filepath.Join(comfy, "output"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(comfy, "output", "mine.png"), []byte("x"), 0o644))
	err := sc.Prepare(opts)
	require.ErrorContains(t, err, "is a folder with files")
	require.FileExists(t, filepath.Join(comfy, "output", "mine.png"), "someone's data is left alone")

	require.Error(t, sc.Prepare(PrepareOptions{Users: []string{"../etc"}}), "a user name is one token")
}

// Usage counts every file under the root, a hard-linked one once.
func TestScratchUsageCountsLinksOnce(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	sc := Scratch{Root: root}
	require.NoError(t, sc.Prepare(PrepareOptions{Users: []string{"user001"}}))
	require.NoError(t, os.WriteFile(filepath.Join(sc.Cache(), "a"), make([]byte, 1000), 0o644))
	require.NoError(t, os.Link(filepath.Join(sc.Cache(), "a"), filepath.Join(sc.Inputs(), "user001", "a.png")))
	require.NoError(t, os.WriteFile(filepath.Join(sc.Outputs(), "user001", "o.png"), make([]byte, 10), 0o644))
	n, err := sc.Usage(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 1010, n)
}
