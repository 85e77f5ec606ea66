package comfyclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/comfysim"
)

type bundle struct {
	sim    *comfysim.Server
	client *comfyclient.Client
}

func setup(t *testing.T) *bundle {
	t.Helper()
	return setupWith(t, comfysim.Config{StepDelay: -1})
}

// execWait bounds a test that runs a prompt: about a second under -race
// on a quiet machine (the simulator's blur, pixel by pixel), 7 s seen on
// a loaded 2-core one.
const execWait = time.Minute

func setupWith(t *testing.T, cfg comfysim.Config) *bundle {
	t.Helper()
	cfg.Dir = t.TempDir()
	sim, err := comfysim.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, sim.Close()) })
	require.NoError(t, sim.Start(context.Background(), "127.0.0.1:0"))
	return &bundle{sim: sim, client: comfyclient.New(sim.URL(), nil)}
}

func workflow(t *testing.T, name string) json.RawMessage {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "comfysim", "testdata", name))
	require.NoError(t, err)
	return data
}

// TestDialWaitsForRegistration queues a prompt the moment Dial returns, on
// a ComfyUI that registers sockets late: the prompt's first messages must
// still arrive, in order.
func TestDialWaitsForRegistration(t *testing.T) {
	t.Parallel()
	b := setupWith(t, comfysim.Config{StepDelay: -1, WSRegisterDelay: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), execWait)
	defer cancel()

	conn, err := b.client.Dial(ctx, "early-bird")
	require.NoError(t, err)
	defer conn.Close()
	require.Equal(t, "early-bird", conn.SID())
	resp, err := b.client.QueuePrompt(ctx, comfyclient.PromptRequest{
		Prompt: workflow(t, "workflow-noweights.json"), ClientID: "early-bird",
	})
	require.NoError(t, err)
	var types []string
	for {
		m, err := conn.Next(ctx)
		require.NoError(t, err)
		if m.Type == "status" || m.Type == "progress_state" {
			continue
		}
		types = append(types, m.Type)
		if m.Type == "executing" && string(m.Data) == `{"node": null, "prompt_id": "`+resp.PromptID+`"}` {
			break
		}
	}
	require.GreaterOrEqual(t, len(types), 3)
	require.Equal(t, []string{"execution_start", "execution_cached"}, types[:2], "all: %v", types)
}

func TestInfo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	stats, err := b.client.SystemStats(ctx)
	require.NoError(t, err)
	require.Equal(t, "cuda", stats.Devices[0].Type)
	require.Equal(t, 0, *stats.Devices[0].Index)
	require.Positive(t, stats.Devices[0].VRAMTotal)

	info, err := b.client.ObjectInfo(ctx)
	require.NoError(t, err)
	require.Contains(t, string(info), `"KSampler"`)
	models, err := b.client.Models(ctx)
	require.NoError(t, err)
	require.Contains(t, models, "checkpoints")
	files, err := b.client.ModelFiles(ctx, "checkpoints")
	require.NoError(t, err)
	require.Contains(t, files, comfysim.DefaultCheckpoint)
	_, err = b.client.ModelFiles(ctx, "nope")
	var se *comfyclient.StatusError
	require.ErrorAs(t, err, &se)
	require.Equal(t, http.StatusNotFound, se.Status)
	emb, err := b.client.Embeddings(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, emb)
}

func TestPromptLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), execWait)
	defer cancel()

	conn, err := b.client.Dial(ctx, "agent-1")
	require.NoError(t, err)
	defer conn.Close()
	require.Equal(t, "agent-1", conn.SID(), "Dial consumed the first status, which names the sid")

	resp, err := b.client.QueuePrompt(ctx, comfyclient.PromptRequest{
		Prompt: workflow(t, "workflow-noweights.json"), ClientID: "agent-1",
		ExtraData: map[string]any{"extra_pnginfo": map[string]any{"workflow": map[string]any{"id": "w"}}},
	})
	require.NoError(t, err)
	require.Len(t, resp.PromptID, 36)

	var outputs []json.RawMessage
	for {
		m, err := conn.Next(ctx)
		require.NoError(t, err)
		if m.Type == "executed" {
			outputs = append(outputs, m.Data)
		}
		if m.Type == "executing" && string(m.Data) == `{"node": null, "prompt_id": "`+resp.PromptID+`"}` {
			break
		}
	}
	require.Len(t, outputs, 2)

	entry, found, err := b.client.History(ctx, resp.PromptID)
	require.NoError(t, err)
	require.True(t, found)
	require.Contains(t, string(entry), `"status_str": "success"`)
	_, found, err = b.client.History(ctx, "unknown")
	require.NoError(t, err)
	require.False(t, found)

	rc, size, err := b.client.View(ctx, "noweights_00001_.png", "sim", "output")
	require.NoError(t, err)
	data, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	require.Equal(t, int64(len(data)), size)
	img, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, image.Rect(0, 0, 128, 96), img.Bounds())

	_, _, err = b.client.View(ctx, "missing.png", "", "output")
	require.ErrorIs(t, err, comfyclient.ErrNotFound)
}

func TestPromptErrorAndQueue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	_, err := b.client.QueuePrompt(ctx, comfyclient.PromptRequest{Prompt: json.RawMessage(`{"1": {"class_type": "Nope", "inputs": {}}}`)})
	var pe *comfyclient.PromptError
	require.True(t, errors.As(err, &pe))
	require.Equal(t, http.StatusBadRequest, pe.Status)
	require.Contains(t, string(pe.Body), `"invalid_prompt"`)

	b.sim.SetFault(comfysim.Fault{Kind: comfysim.FaultHang})
	first, err := b.client.QueuePrompt(ctx, comfyclient.PromptRequest{Prompt: workflow(t, "workflow-noweights.json")})
	require.NoError(t, err)
	n := 7.0
	second, err := b.client.QueuePrompt(ctx, comfyclient.PromptRequest{Prompt: workflow(t, "workflow-noweights.json"), Number: &n, PromptID: "mine"})
	require.NoError(t, err)
	require.Equal(t, "mine", second.PromptID)
	require.Equal(t, 7.0, second.Number)

	require.Eventually(t, func() bool {
		running, _, err := b.client.Queue(ctx)
		return err == nil && len(running) == 1
	}, 5*time.Second, 10*time.Millisecond)
	running, pending, err := b.client.Queue(ctx)
	require.NoError(t, err)
	require.Equal(t, first.PromptID, running[0].PromptID)
	require.Equal(t, []string{"5", "6"}, running[0].Outputs)
	require.Len(t, pending, 1)
	require.Equal(t, 7.0, pending[0].Number)

	require.NoError(t, b.client.DeleteQueued(ctx, "mine"))
	b.sim.SetFault(comfysim.Fault{})
	require.NoError(t, b.client.Interrupt(ctx, first.PromptID))
	require.Eventually(t, func() bool {
		_, found, err := b.client.History(ctx, first.PromptID)
		return err == nil && found
	}, 5*time.Second, 10*time.Millisecond)
}

func TestUpload(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	res, err := b.client.UploadImage(ctx, "x.png", "", bytes.NewReader([]byte("a")), false)
	require.NoError(t, err)
	require.Equal(t, comfyclient.UploadResult{Name: "x.png", Subfolder: "", Type: "input"}, res)
	res, err = b.client.UploadImage(ctx, "x.png", "", bytes.NewReader([]byte("b")), false)
	require.NoError(t, err)
	require.Equal(t, "x (1).png", res.Name)
	res, err = b.client.UploadImage(ctx, "x.png", "u1", bytes.NewReader([]byte("b")), true)
	require.NoError(t, err)
	require.Equal(t, comfyclient.UploadResult{Name: "x.png", Subfolder: "u1", Type: "input"}, res)
	_, err = os.Stat(filepath.Join(b.sim.InputDir(), "u1", "x.png"))
	require.NoError(t, err)
}
