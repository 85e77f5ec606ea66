package stack

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/coder/websocket"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfysim"
)

// startStack starts a whole system with cfg's defaults filled in.
func startStack(t *testing.T, cfg Config) *testBundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*testutil.WaitTimeout())
	t.Cleanup(cancel)
	cfg.Dir = t.TempDir()
	if cfg.Password == "" {
		cfg.Password = "pw"
	}
	if cfg.GPUs == 0 {
		cfg.GPUs = 1
	}
	if cfg.StepDelay == 0 {
		cfg.StepDelay = -1
	}
	cfg.Logger = zerolog.Nop()
	s, err := Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { s.Stop(context.Background()) })
	return &testBundle{stack: s, ctx: ctx}
}

// submit posts a prompt body and returns its prompt id.
func (tb *testBundle) submit(t *testing.T, user string, body []byte) string {
	t.Helper()
	code, resp := tb.post(t, user, body)
	require.Equal(t, http.StatusOK, code, string(resp))
	var r struct {
		PromptID string `json:"prompt_id"`
	}
	require.NoError(t, json.Unmarshal(resp, &r))
	require.NotEmpty(t, r.PromptID)
	return r.PromptID
}

// history waits for the prompt's history entry and returns it.
func (tb *testBundle) history(t *testing.T, user, id string) map[string]any {
	t.Helper()
	var entry map[string]any
	require.Eventually(t, func() bool {
		code, body := tb.do(t, user, http.MethodGet, "/history/"+id, nil)
		if code != http.StatusOK {
			return false
		}
		var h map[string]map[string]any
		if json.Unmarshal(body, &h) != nil || h[id] == nil {
			return false
		}
		entry = h[id]
		return true
	}, 3*testutil.WaitTimeout(), 20*time.Millisecond, "history entry of %s", id)
	return entry
}

// "Queue selected output nodes": partial_execution_targets naming one of
// two SaveImage nodes runs only that one on the GPU side. Its queue tuple,
// history and files show it alone; the other node never ran.
func TestPartialExecutionTargets(t *testing.T) {
	t.Parallel()
	tb := startStack(t, Config{Users: []string{"user001"}})
	prompt := `{
	  "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 255}},
	  "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
	  "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "partial/kept"}},
	  "6": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "partial/skipped"}}
	}`
	sid := "00000000000000000000000000000a01"
	c := tb.dial(t, "user001", sid)
	id := tb.submit(t, "user001", fmt.Appendf(nil,
		`{"prompt": %s, "client_id": %q, "partial_execution_targets": ["5"]}`, prompt, sid))

	seen := finished(t, tb.ctx, c, 1)
	require.Contains(t, seen[id], "execution_success")

	entry := tb.history(t, "user001", id)
	outputs := entry["outputs"].(map[string]any)
	require.Contains(t, outputs, "5")
	require.NotContains(t, outputs, "6", "the node outside the targets must not run")
	tuple := entry["prompt"].([]any)
	require.Equal(t, []any{"5"}, tuple[4], "outputs_to_execute is the target")

	// The GPU side ran only node 5: its simulators' histories agree, and
	// no file of node 6 reached the participant.
	ran := 0
	for _, sim := range tb.stack.Runtime.Simulators() {
		resp, err := http.Get(sim.URL() + "/history")
		require.NoError(t, err)
		var h map[string]struct {
			Outputs map[string]any `json:"outputs"`
			Prompt  []any          `json:"prompt"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&h))
		resp.Body.Close()
		for _, e := range h {
			ran++
			require.Contains(t, e.Outputs, "5")
			require.NotContains(t, e.Outputs, "6")
			require.Equal(t, []any{"5"}, e.Prompt[4], "ComfyUI was given the target")
		}
	}
	require.Equal(t, 1, ran)
	img := outputs["5"].(map[string]any)["images"].([]any)[0].(map[string]any)
	require.Equal(t, "partial", img["subfolder"])
	code, _ := tb.do(t, "user001", http.MethodGet,
		fmt.Sprintf("/view?filename=%s&subfolder=partial&type=output", img["filename"]), nil)
	require.Equal(t, http.StatusOK, code)
	code, _ = tb.do(t, "user001", http.MethodGet, "/view?filename=skipped_00001_.png&subfolder=partial&type=output", nil)
	require.Equal(t, http.StatusNotFound, code)

	// A target that is not an output node: ComfyUI's prompt_no_outputs,
	// and nothing is queued.
	code, body := tb.post(t, "user001", fmt.Appendf(nil,
		`{"prompt": %s, "partial_execution_targets": ["2"]}`, prompt))
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, string(body), `"prompt_no_outputs"`)
}

// binaryFrame is one binary WebSocket message split per comfyui-api.md §3.4.
type binaryFrame struct {
	event  uint32
	format uint32         // event 1
	meta   map[string]any // event 4
	image  []byte
}

func parseBinary(t *testing.T, b []byte) binaryFrame {
	t.Helper()
	require.GreaterOrEqual(t, len(b), 8)
	f := binaryFrame{event: binary.BigEndian.Uint32(b)}
	switch f.event {
	case 1:
		f.format = binary.BigEndian.Uint32(b[4:])
		f.image = b[8:]
	case 4:
		n := binary.BigEndian.Uint32(b[4:])
		require.LessOrEqual(t, int(n), len(b)-8)
		require.NoError(t, json.Unmarshal(b[8:8+n], &f.meta))
		f.image = b[8+n:]
	default:
		t.Fatalf("unexpected binary event %d", f.event)
	}
	return f
}

// collect reads a socket until the prompt ended (executing null), returning
// the binary frames it got.
func collect(t *testing.T, ctx context.Context, c *websocket.Conn, id string) []binaryFrame {
	t.Helper()
	var frames []binaryFrame
	for {
		typ, b, err := c.Read(ctx)
		require.NoError(t, err)
		if typ == websocket.MessageBinary {
			frames = append(frames, parseBinary(t, b))
			continue
		}
		var m msg
		require.NoError(t, json.Unmarshal(b, &m))
		if m.Type == "executing" && m.Data.Node == nil && m.Data.PromptID == id {
			return frames
		}
	}
}

// Sampler previews through the whole system (the agent asks its ComfyUI
// for previews with metadata): a participant whose socket advertised
// supports_preview_metadata gets binary event 4 naming their own prompt;
// one whose socket did not gets ComfyUI's plain event 1. Neither sees the
// other's previews.
func TestPreviewsPerClientFeatureFlags(t *testing.T) {
	t.Parallel()
	tb := startStack(t, Config{Users: []string{"user001", "user002"}, GPUs: 2,
		ConfigureSim: func(_ int, c *comfysim.Config) { c.PreviewMethod = "auto" }})
	wf, err := os.ReadFile("../../examples/workflows/txt2img.json")
	require.NoError(t, err)
	wf = bytes.Replace(wf, []byte(`"steps": 20`), []byte(`"steps": 4`), 1)

	modern := tb.dial(t, "user001", "0000000000000000000000000000b001")
	require.NoError(t, modern.Write(tb.ctx, websocket.MessageText,
		[]byte(`{"type": "feature_flags", "data": {"supports_preview_metadata": true, "supports_manager_v4_ui": true}}`)))
	legacy := tb.dial(t, "user002", "0000000000000000000000000000b002")
	// The feature_flags reply proves the proxy took the flags before the
	// prompt is queued.
	for {
		_, b, err := modern.Read(tb.ctx)
		require.NoError(t, err)
		var m msg
		require.NoError(t, json.Unmarshal(b, &m))
		if m.Type == "feature_flags" {
			var ff struct {
				Data map[string]any `json:"data"`
			}
			require.NoError(t, json.Unmarshal(b, &ff))
			require.Equal(t, true, ff.Data["supports_preview_metadata"])
			break
		}
	}

	idModern := tb.submit(t, "user001", fmt.Appendf(nil, `{"prompt": %s, "client_id": "0000000000000000000000000000b001"}`, wf))
	idLegacy := tb.submit(t, "user002", fmt.Appendf(nil, `{"prompt": %s, "client_id": "0000000000000000000000000000b002"}`, wf))

	legacyCh := make(chan []binaryFrame, 1)
	go func() { legacyCh <- collect(t, tb.ctx, legacy, idLegacy) }()
	modernFrames := collect(t, tb.ctx, modern, idModern)
	legacyFrames := <-legacyCh

	require.NotEmpty(t, modernFrames, "previews with metadata")
	for _, f := range modernFrames {
		require.EqualValues(t, 4, f.event)
		require.Equal(t, idModern, f.meta["prompt_id"], "the job's id, not the GPU side's")
		require.Equal(t, "14", f.meta["node_id"])
		require.Equal(t, "image/jpeg", f.meta["image_type"])
		require.True(t, bytes.HasPrefix(f.image, []byte{0xff, 0xd8}), "a JPEG")
	}
	require.NotEmpty(t, legacyFrames, "plain previews")
	for _, f := range legacyFrames {
		require.EqualValues(t, 1, f.event)
		require.EqualValues(t, 1, f.format, "JPEG")
		require.True(t, bytes.HasPrefix(f.image, []byte{0xff, 0xd8}), "a JPEG")
	}
}
