package agent_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// A participant's PNG is the file ComfyUI writes for their own prompt:
// the agent ran a rewrite (names under user001/, keys in another order),
// which ComfyUI embeds in the PNG's "prompt" chunk; the stored file
// carries the participant's prompt instead, byte for byte what the same
// ComfyUI writes when it is given the participant's prompt itself, and
// the store's sha256 is that of the stored bytes.
func TestPNGCarriesTheParticipantsPrompt(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1})
	// Keys out of sorted order, a non-ASCII text and a float spelt as
	// Python would not: json.dumps' rendering is what must come out.
	prompt := `{"5": {"inputs": {"filename_prefix": "own/t", "images": ["1", 0]}, "class_type": "SaveImage",
	  "_meta": {"title": "Sauvegarde – été"}},
	 "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 4660}}}`
	extra := `{"extra_pnginfo": {"workflow": {"nodes": [{"id": 5, "widgets_values": ["own/t"]}], "version": 0.4}}}`
	id := b.submitJob(t, wire.Job{ID: uuid.NewString(), User: "user001", Prompt: json.RawMessage(prompt),
		ExtraData: json.RawMessage(extra), OutputsToExecute: []string{"5"}})
	recs := b.rec.await(t, []string{id})
	b.requireOnce(t, recs, wire.StateSucceeded)
	var out struct {
		Images []struct{ Filename, Subfolder string } `json:"images"`
	}
	require.NoError(t, json.Unmarshal(recs[id].Outputs["5"], &out))
	require.Len(t, out.Images, 1)
	require.Equal(t, "own", out.Images[0].Subfolder)
	ref := filestore.Ref{User: "user001", Kind: filestore.KindOutput, Subfolder: "own", Name: out.Images[0].Filename}
	f, err := b.broker.Store().Open(t.Context(), ref)
	require.NoError(t, err)
	stored, err := io.ReadAll(f)
	require.NoError(t, err)
	f.Close()
	st, err := b.broker.Store().Stat(t.Context(), ref)
	require.NoError(t, err)
	require.EqualValues(t, len(stored), st.Size)
	sum := sha256.Sum256(stored)
	if st.SHA256 != "" {
		require.Equal(t, hex.EncodeToString(sum[:]), st.SHA256, "the store's sha256 is that of the stored bytes")
	}
	_, err = png.Decode(bytes.NewReader(stored))
	require.NoError(t, err, "a valid PNG (chunk CRCs included)")

	// The same ComfyUI given the participant's prompt directly.
	sim := b.runtime.Simulators()[0]
	comfy := comfyclient.New(sim.URL(), nil)
	direct, err := comfy.QueuePrompt(t.Context(), comfyclient.PromptRequest{
		Prompt: json.RawMessage(prompt), ExtraData: json.RawMessage(extra)})
	require.NoError(t, err)
	// ComfyUI's history, which no event of ours announces.
	testutil.EventuallyNoError(t, func() error {
		_, found, err := comfy.History(t.Context(), direct.PromptID)
		if err == nil && !found {
			err = errors.New("not in the history yet")
		}
		return err
	}, "the direct prompt to finish")
	want, err := os.ReadFile(filepath.Join(sim.OutputDir(), "own", "t_00001_.png"))
	require.NoError(t, err)
	require.Equal(t, textChunks(t, want), textChunks(t, stored))
	require.Contains(t, textChunks(t, stored)["prompt"], `"filename_prefix": "own/t"`)
	require.Equal(t, want, stored, "byte for byte what ComfyUI writes for the participant's prompt")
}

// textChunks returns a PNG's tEXt chunks by keyword.
func textChunks(t *testing.T, data []byte) map[string]string {
	t.Helper()
	require.True(t, bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")))
	out := map[string]string{}
	for p := 8; p+12 <= len(data); {
		n := int(uint32(data[p])<<24 | uint32(data[p+1])<<16 | uint32(data[p+2])<<8 | uint32(data[p+3]))
		typ := string(data[p+4 : p+8])
		if typ == "tEXt" {
			kw, text, _ := bytes.Cut(data[p+8:p+8+n], []byte{0})
			out[string(kw)] = string(text)
		}
		p += 12 + n
	}
	return out
}
