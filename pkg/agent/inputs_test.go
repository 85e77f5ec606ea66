package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"image"
	"image/png"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// noisePNG is a PNG of w×h random pixels: it does not compress, so its
// size is about 4·w·h bytes.
func noisePNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range img.Pix {
		img.Pix[i] = uint8(rng.UintN(256))
	}
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	return buf.Bytes()
}

// putInput stores a participant's upload in mello's file store, as the
// proxy does, and returns its manifest entry.
func (b *bundle) putInput(t *testing.T, user, subfolder, name string, data []byte) wire.InputFile {
	t.Helper()
	ctx := context.Background()
	sum := sha256.Sum256(data)
	w, err := b.broker.Store().Create(ctx, filestore.Ref{User: user, Kind: filestore.KindInput, Subfolder: subfolder, Name: name})
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	_, err = w.Commit(ctx, hex.EncodeToString(sum[:]))
	require.NoError(t, err)
	return wire.InputFile{Subfolder: subfolder, Name: name, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
}

// An input far over ComfyUI's upload limit (here the simulator's
// --max-upload-size is 64 KiB; ComfyUI's default is 100 MB, which a video
// passes easily) reaches ComfyUI all the same: the agent links it from
// its cache into ComfyUI's input folder instead of POSTing it, so the
// staged file is the cache's file (one inode) and the heartbeat counts it
// once. Once the run is over, its output, safe in mello, is emptied on
// the box, its name kept.
func TestInputsPlacedInComfyUIsFolder(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1, simConfig: func(_ int, c *comfysim.Config) { c.MaxUploadSize = 64 << 10 }})
	// 256 KiB of noise, four times the limit (bigger costs seconds under
	// -race: generating 4 MiB took 6 s on a loaded machine).
	data := noisePNG(t, 256, 256)
	require.Greater(t, len(data), 4*(64<<10), "well over ComfyUI's upload limit")
	in := b.putInput(t, "user001", "refs", "noise.png", data)
	id := uuid.NewString()
	prompt := `{"1": {"class_type": "LoadImage", "inputs": {"image": "refs/noise.png"}},
	            "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 0.25}},
	            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "placed/p"}}}`
	b.submitJob(t, wire.Job{ID: id, User: "user001", Prompt: []byte(prompt), OutputsToExecute: []string{"3"}, Inputs: []wire.InputFile{in}})
	recs := b.rec.await(t, []string{id})
	b.requireOnce(t, recs, wire.StateSucceeded)

	sim := b.runtime.Simulators()[0]
	staged, err := os.Stat(filepath.Join(sim.InputDir(), "user001", "refs", "noise.png"))
	require.NoError(t, err)
	cached, err := os.Stat(filepath.Join(b.cfg.ScratchDir, "cache", "inputs", in.SHA256))
	require.NoError(t, err, "the input cache is under the scratch root")
	require.True(t, os.SameFile(staged, cached), "the staged input is a link to the cached one")

	b.awaitQuiet(t)
	out, err := os.Stat(filepath.Join(sim.OutputDir(), "user001", "placed", "p_00001_.png"))
	require.NoError(t, err, "the output's name stays on the box")
	require.Zero(t, out.Size(), "the shipped output was emptied")
	st, err := b.broker.Store().Stat(t.Context(), filestore.Ref{User: "user001", Kind: filestore.KindOutput, Subfolder: "placed", Name: "p_00001_.png"})
	require.NoError(t, err)
	require.Positive(t, st.Size, "mello has the output")

	b.rec.waitFor(t, "the heartbeat to count the cached input, once", func() bool {
		hb, ok := b.rec.lastHeartbeat()
		return ok && hb.ScratchBytes >= in.Size && hb.ScratchBytes < 2*in.Size
	})
}

// With KeepOutputs the box keeps its outputs.
func TestKeepOutputs(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1, configure: func(c agent.Config) agent.Config { c.KeepOutputs = true; return c }})
	id := b.submit(t, "user001", 0)
	b.requireOnce(t, b.rec.await(t, []string{id}), wire.StateSucceeded)
	b.awaitQuiet(t)
	out, err := os.Stat(filepath.Join(b.runtime.Simulators()[0].OutputDir(), "user001", "sim", "t_00001_.png"))
	require.NoError(t, err)
	require.Positive(t, out.Size())
}
