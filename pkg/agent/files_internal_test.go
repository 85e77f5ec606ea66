package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/atelier-run/atelier/pkg/agent/runtime"
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
		s:       &slot{a: &Agent{}, ep: runtime.Endpoint{OutputDir: out}},
		job:     wire.Job{ID: "j1", User: "user001"},
		shipped: map[fileKey]outputFile{},
	}
	for _, output := range []string{
		`{"images":[{"filename":"theirs.png","subfolder":"user002","type":"output"}]}`,
		`{"gifs":[{"filename":"x.mp4","subfolder":"","type":"output","format":"video/h264-mp4"}]}`,
	} {
		_, err := r.shipOutput(t.Context(), "9", json.RawMessage(output))
		require.ErrorIs(t, err, ErrForeignOutput, output)
		require.Contains(t, refusedReason(err), "outside your folder")
	}
	require.Empty(t, r.shipped)
}

// The transfer id of an output names its place in the job's outputs, not
// its file name: a re-run saves the same output under ComfyUI's next
// counter and must resume the same upload; any other file of the job (or
// the same place in another job) is another upload.
func TestOutputTransferIDNamesThePlace(t *testing.T) {
	t.Parallel()
	k := fileKey{kind: "output", subfolder: "user001/video", name: "LTX_00001_.mp4"}
	at := outputPlace{node: "9", list: "gifs", index: 0}
	id := outputTransferID("j1", k, at)
	require.Len(t, id, 32)

	rerun := k
	rerun.name = "LTX_00002_.mp4"
	require.Equal(t, id, outputTransferID("j1", rerun, at), "the re-run's file resumes the upload")

	others := map[string]string{
		"another job":    outputTransferID("j2", k, at),
		"another node":   outputTransferID("j1", k, outputPlace{node: "10", list: "gifs"}),
		"another list":   outputTransferID("j1", k, outputPlace{node: "9", list: "images"}),
		"another index":  outputTransferID("j1", k, outputPlace{node: "9", list: "gifs", index: 1}),
		"another folder": outputTransferID("j1", fileKey{kind: "output", subfolder: "user001/other", name: k.name}, at),
		"another kind":   outputTransferID("j1", fileKey{kind: "temp", subfolder: k.subfolder, name: k.name}, at),
		// Separators matter: node "9" list "1gifs" is not node "91" list "gifs".
		"shifted fields": outputTransferID("j1", k, outputPlace{node: "9g", list: "ifs"}),
	}
	seen := map[string]string{id: "the output"}
	for what, other := range others {
		require.NotContains(t, seen, other, "%s has the id of %s", what, seen[other])
		seen[other] = what
	}
}
