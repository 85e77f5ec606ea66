package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// ComfyUI reports an output in another participant's folder (a custom node
// that ignores filename_prefix): the run refuses it before reading or
// sending a byte (this run has no connection to send on), with a reason
// that names the file.
func TestShipOutputRefusesForeignFolder(t *testing.T) {
	t.Parallel()
	out := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(out, "user002"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(out, "user002", "theirs.png"), []byte("png"), 0o644))
	r := &run{
		s:       &slot{a: &Agent{}, ep: Endpoint{OutputDir: out}},
		job:     wire.Job{ID: "j1", User: "user001"},
		shipped: map[fileKey]outputFile{},
	}
	for _, output := range []string{
		`{"images":[{"filename":"theirs.png","subfolder":"user002","type":"output"}]}`,
		`{"gifs":[{"filename":"x.mp4","subfolder":"","type":"output","format":"video/h264-mp4"}]}`,
	} {
		_, err := r.shipOutput(t.Context(), json.RawMessage(output))
		require.ErrorIs(t, err, ErrForeignOutput, output)
		require.Contains(t, refusedReason(err), "outside your folder")
	}
	require.Empty(t, r.shipped)
}
