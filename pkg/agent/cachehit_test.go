package agent_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// The same prompt twice on one slot: ComfyUI serves the second from its
// cache and sends the output node's old "executed" again, naming the file
// of the first run, which the agent has emptied on the box since. The
// participant gets the file the first run stored, whole, not an empty
// copy of it.
func TestCachedOutputAfterEmptied(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1})
	prompt := `{
 "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": 1234}},
 "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "hit/t"}}}`
	type image struct{ Filename, Subfolder string }
	var got []image
	for range 2 {
		id := b.submitPrompt(t, uuid.NewString(), "user001", prompt, []string{"5"})
		recs := b.rec.await(t, []string{id})
		b.requireOnce(t, recs, wire.StateSucceeded)
		b.awaitQuiet(t)
		var out struct {
			Images []image `json:"images"`
		}
		require.NoError(t, json.Unmarshal(recs[id].Outputs["5"], &out))
		require.Len(t, out.Images, 1)
		got = append(got, out.Images[0])
		st, err := b.broker.Store().Stat(t.Context(), filestore.Ref{User: "user001", Kind: filestore.KindOutput, Subfolder: out.Images[0].Subfolder, Name: out.Images[0].Filename})
		require.NoError(t, err)
		require.Positive(t, st.Size)
		box, err := os.Stat(filepath.Join(b.runtime.Simulators()[0].OutputDir(), "user001", "hit", "t_00001_.png"))
		require.NoError(t, err)
		require.Zero(t, box.Size(), "emptied on the box")
	}
	require.Equal(t, got[0], got[1], "the cached run names the stored file of the first")
}
