package comfysim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// nodeSteps is the §3.5 per-node sequence for a node without UI output.
var nodeSteps = []string{"progress_state", "executing", "progress_state"}

// outputSteps is the sequence for a node with UI output.
var outputSteps = []string{"progress_state", "executing", "executed", "progress_state"}

func TestNoWeightsMessageSequence(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(t, "/ws?clientId=client-a")

	hello := ws.next()
	require.Equal(t, "status", hello.Type)
	require.JSONEq(t, `{"status": {"exec_info": {"queue_remaining": 0}}, "sid": "client-a"}`, string(hello.Data))

	id := b.submit(t, workflow(t, "workflow-noweights.json"), "client-a")
	require.Len(t, id, 36)
	msgs := ws.until(id)

	// Execution order: ComfyUI's ExecutionList runs the PreviewImage (an
	// output node) as soon as its input is ready.
	want := []string{"status", "status", "execution_start", "execution_cached"}
	for _, node := range []string{"1", "2", "6", "3", "4", "5"} {
		if node == "5" || node == "6" {
			want = append(want, outputSteps...)
		} else {
			want = append(want, nodeSteps...)
		}
	}
	want = append(want, "execution_success", "status", "executing")
	require.Equal(t, want, types(msgs))

	require.JSONEq(t, `{"status": {"exec_info": {"queue_remaining": 1}}}`, string(msgs[0].Data))
	require.JSONEq(t, `{"status": {"exec_info": {"queue_remaining": 1}}}`, string(msgs[1].Data))
	require.JSONEq(t, `{"status": {"exec_info": {"queue_remaining": 0}}}`, string(msgs[len(msgs)-2].Data))

	var cached struct {
		Nodes     []string `json:"nodes"`
		PromptID  string   `json:"prompt_id"`
		Timestamp int64    `json:"timestamp"`
	}
	require.NoError(t, json.Unmarshal(msgs[3].Data, &cached))
	require.Empty(t, cached.Nodes)
	require.Equal(t, id, cached.PromptID)
	require.NotZero(t, cached.Timestamp)

	executing := find(msgs, "executing")
	require.JSONEq(t, fmt.Sprintf(`{"node": "1", "display_node": "1", "prompt_id": %q}`, id), string(executing[0].Data))
	require.JSONEq(t, fmt.Sprintf(`{"node": null, "prompt_id": %q}`, id), string(executing[len(executing)-1].Data))

	// The first progress_state shows node 1 running at 0.0/1.0.
	require.JSONEq(t, fmt.Sprintf(`{"prompt_id": %[1]q, "nodes": {"1": {"value": 0.0, "max": 1.0, "state": "running",
		"node_id": "1", "prompt_id": %[1]q, "display_node_id": "1", "parent_node_id": null, "real_node_id": "1"}}}`, id),
		string(msgs[4].Data))
	// Python-style JSON on the wire: 0.0 not 0.
	require.Contains(t, string(msgs[4].Data), `"value": 0.0`)

	executed := find(msgs, "executed")
	require.Len(t, executed, 2)
	var save struct {
		Node   string `json:"node"`
		Output struct {
			Images []struct{ Filename, Subfolder, Type string } `json:"images"`
		} `json:"output"`
	}
	require.NoError(t, json.Unmarshal(executed[1].Data, &save))
	require.Equal(t, "5", save.Node)
	require.Len(t, save.Output.Images, 1)
	require.Equal(t, "noweights_00001_.png", save.Output.Images[0].Filename)
	require.Equal(t, "sim", save.Output.Images[0].Subfolder)
	require.Equal(t, "output", save.Output.Images[0].Type)

	var preview struct {
		Output struct {
			Images []struct{ Filename, Subfolder, Type string } `json:"images"`
		} `json:"output"`
	}
	require.NoError(t, json.Unmarshal(executed[0].Data, &preview))
	require.Regexp(t, `^ComfyUI_temp_[a-z]{5}_00001_\.png$`, preview.Output.Images[0].Filename)
	require.Equal(t, "temp", preview.Output.Images[0].Type)

	// The saved file is a real 128x96 PNG: 0x3333FF inverted is 0xCCCC00,
	// and blurring a uniform image keeps it uniform.
	status, data, hdr := b.get(t, "/view?filename=noweights_00001_.png&subfolder=sim&type=output")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "image/png", hdr.Get("Content-Type"))
	require.Equal(t, `filename="noweights_00001_.png"`, hdr.Get("Content-Disposition"))
	img, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, 128, img.Bounds().Dx())
	require.Equal(t, 96, img.Bounds().Dy())
	for _, p := range [][2]int{{0, 0}, {64, 48}, {127, 95}} {
		r, g, bl, a := img.At(p[0], p[1]).RGBA()
		require.InDelta(t, 0xCC, r>>8, 2)
		require.InDelta(t, 0xCC, g>>8, 2)
		require.InDelta(t, 0x00, bl>>8, 2)
		require.Equal(t, uint32(0xffff), a)
	}
	// The prompt is embedded as a PNG text chunk, as SaveImage does.
	require.Contains(t, string(data), "tEXtprompt\x00{")

	// The file is on disk where ComfyUI would put it.
	_, err = os.Stat(filepath.Join(b.dir, "output", "sim", "noweights_00001_.png"))
	require.NoError(t, err)
}

func TestHistoryEntryShape(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(t, "/ws?clientId=hist")
	ws.next()
	id := b.submit(t, workflow(t, "workflow-noweights.json"), "hist")
	ws.until(id)

	status, raw, _ := b.get(t, "/history/"+id)
	require.Equal(t, http.StatusOK, status)
	var hist map[string]struct {
		Prompt  []json.RawMessage          `json:"prompt"`
		Outputs map[string]json.RawMessage `json:"outputs"`
		Status  struct {
			StatusStr string              `json:"status_str"`
			Completed bool                `json:"completed"`
			Messages  [][]json.RawMessage `json:"messages"`
		} `json:"status"`
		Meta map[string]json.RawMessage `json:"meta"`
	}
	require.NoError(t, json.Unmarshal(raw, &hist))
	e := hist[id]
	require.Len(t, e.Prompt, 5)
	require.JSONEq(t, `0`, string(e.Prompt[0]))
	require.JSONEq(t, fmt.Sprintf("%q", id), string(e.Prompt[1]))
	require.JSONEq(t, `{"client_id": "hist"}`, string(e.Prompt[3]))
	require.JSONEq(t, `["5", "6"]`, string(e.Prompt[4]))
	require.Equal(t, "success", e.Status.StatusStr)
	require.True(t, e.Status.Completed)
	var events []string
	for _, m := range e.Status.Messages {
		var ev string
		require.NoError(t, json.Unmarshal(m[0], &ev))
		events = append(events, ev)
	}
	require.Equal(t, []string{"execution_start", "execution_cached", "execution_success"}, events)
	require.Len(t, e.Outputs, 2)
	require.JSONEq(t, `{"images": [{"filename": "noweights_00001_.png", "subfolder": "sim", "type": "output"}]}`, string(e.Outputs["5"]))
	require.JSONEq(t, `{"node_id": "5", "display_node": "5", "parent_node": null, "real_node_id": "5"}`, string(e.Meta["5"]))
	// Key order of the entry is prompt, outputs, status, meta.
	s := string(raw)
	require.Less(t, strings.Index(s, `"prompt"`), strings.Index(s, `"outputs"`))
	require.Less(t, strings.Index(s, `"outputs"`), strings.Index(s, `"status"`))
	require.Less(t, strings.Index(s, `"status"`), strings.Index(s, `"meta"`))

	// Unknown ids give {} (never 404); the list form is keyed by id.
	status, raw, _ = b.get(t, "/api/history/nope")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "{}", string(raw))
	var all map[string]json.RawMessage
	b.getJSON(t, "/history?max_items=200", &all)
	require.Contains(t, all, id)
}

func TestCachedResubmission(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(t, "/ws?clientId=c")
	ws.next()
	first := b.submit(t, workflow(t, "workflow-noweights.json"), "c")
	ws.until(first)
	second := b.submit(t, workflow(t, "workflow-noweights.json"), "c")
	msgs := ws.until(second)

	want := []string{"status", "status", "execution_start", "execution_cached",
		"executed", "progress_state", "executed", "progress_state",
		"execution_success", "status", "executing"}
	require.Equal(t, want, types(msgs))
	var cached struct {
		Nodes []string `json:"nodes"`
	}
	require.NoError(t, json.Unmarshal(msgs[3].Data, &cached))
	require.Equal(t, []string{"1", "2", "3", "4", "5", "6"}, cached.Nodes)

	// No new file: the history shows the old outputs.
	entries, err := os.ReadDir(filepath.Join(b.dir, "output", "sim"))
	require.NoError(t, err)
	require.Len(t, entries, 1)
	var hist map[string]struct {
		Outputs map[string]json.RawMessage `json:"outputs"`
	}
	b.getJSON(t, "/history/"+second, &hist)
	require.JSONEq(t, `{"images": [{"filename": "noweights_00001_.png", "subfolder": "sim", "type": "output"}]}`, string(hist[second].Outputs["5"]))

	// Changing one widget re-runs only what depends on it.
	wf := strings.Replace(string(workflow(t, "workflow-noweights.json")), `"width": 128`, `"width": 64`, 1)
	third := b.submit(t, json.RawMessage(wf), "c")
	msgs = ws.until(third)
	require.NoError(t, json.Unmarshal(msgs[3].Data, &cached))
	require.Equal(t, []string{"1", "2", "3", "6"}, cached.Nodes)
	_, err = os.Stat(filepath.Join(b.dir, "output", "sim", "noweights_00002_.png"))
	require.NoError(t, err)
}

func TestNoClientIDTargeting(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(t, "/ws")
	hello := ws.next()
	var d struct {
		SID string `json:"sid"`
	}
	require.NoError(t, json.Unmarshal(hello.Data, &d))
	require.Regexp(t, `^[0-9a-f]{32}$`, d.SID)

	// A prompt without client_id: no execution events, but progress_state
	// is broadcast; the final status arrives.
	id := b.submit(t, workflow(t, "workflow-noweights.json"), "")
	var got []string
	for {
		m := ws.next()
		got = append(got, m.Type)
		if m.Type == "status" && strings.Contains(string(m.Data), `"queue_remaining": 0`) {
			break
		}
	}
	require.NotContains(t, got, "execution_start")
	require.NotContains(t, got, "executing")
	require.NotContains(t, got, "executed")
	require.Contains(t, got, "progress_state")
	var hist map[string]json.RawMessage
	b.getJSON(t, "/history/"+id, &hist)
	require.Contains(t, hist, id)
}

func TestTxt2ImgProgress(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.PreviewMethod = "auto" })
	ws := b.dial(t, "/ws?clientId=k")
	ws.next()
	id := b.submit(t, workflow(t, "workflow-txt2img.json"), "k")
	msgs := ws.until(id)

	progress := find(msgs, "progress")
	require.Len(t, progress, 20)
	require.JSONEq(t, fmt.Sprintf(`{"value": 20, "max": 20, "prompt_id": %q, "node": "14"}`, id), string(progress[19].Data))
	binaries := 0
	for _, m := range msgs {
		if m.Binary != nil {
			binaries++
			// Event 1 (no preview metadata advertised), JPEG format 1.
			require.Equal(t, []byte{0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xd8}, m.Binary[:10])
		}
	}
	require.Equal(t, 20, binaries)

	var hist map[string]struct {
		Outputs map[string]struct {
			Images []struct{ Filename string } `json:"images"`
		} `json:"outputs"`
	}
	b.getJSON(t, "/history/"+id, &hist)
	require.Equal(t, "txt2img_00001_.png", hist[id].Outputs["16"].Images[0].Filename)
	status, data, _ := b.get(t, "/view?filename=txt2img_00001_.png")
	require.Equal(t, http.StatusOK, status)
	img, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, 512, img.Bounds().Dx())
}

func TestPreviewWithMetadata(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.PreviewMethod = "auto" })
	ws := b.dial(t, "/ws?clientId=meta")
	ws.next()
	require.NoError(t, ws.conn.Write(t.Context(), 1, []byte(`{"type": "feature_flags", "data": {"supports_preview_metadata": true}}`)))
	flags := ws.next()
	require.Equal(t, "feature_flags", flags.Type)
	require.JSONEq(t, `{"supports_preview_metadata": true, "max_upload_size": 104857600.0}`, string(flags.Data))
	require.Contains(t, string(flags.Data), "104857600.0")

	id := b.submit(t, workflow(t, "workflow-txt2img.json"), "meta")
	msgs := ws.until(id)
	// Per step: progress_state, event 4 preview, progress.
	for i, m := range msgs {
		if m.Binary == nil {
			continue
		}
		require.Equal(t, []byte{0, 0, 0, 4}, m.Binary[:4])
		require.Equal(t, "progress_state", msgs[i-1].Type)
		require.Equal(t, "progress", msgs[i+1].Type)
		n := int(m.Binary[4])<<24 | int(m.Binary[5])<<16 | int(m.Binary[6])<<8 | int(m.Binary[7])
		var meta map[string]any
		require.NoError(t, json.Unmarshal(m.Binary[8:8+n], &meta))
		require.Equal(t, "14", meta["node_id"])
		require.Equal(t, "image/jpeg", meta["image_type"])
	}
}

func TestLoadImageWorkflow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Without the upload, validation fails with LoadImage's own check.
	status, body := b.post(t, "/prompt", map[string]any{"prompt": workflow(t, "workflow-loadimage.json")})
	require.Equal(t, http.StatusBadRequest, status)
	require.JSONEq(t, `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
		"node_errors": {"1": {"errors": [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
			"details": "image - Invalid image file: example.png", "extra_info": {"input_name": "image"}}],
			"dependent_outputs": ["4"], "class_type": "LoadImage"}}}`, string(body))

	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, solidImage(1, 40, 60, 0x102030).frame(0)))
	status, body = b.upload(t, "/upload/image", "example.png", buf.Bytes(), nil)
	require.Equal(t, http.StatusOK, status, string(body))

	var info map[string]struct {
		Input struct {
			Required map[string][]json.RawMessage `json:"required"`
		} `json:"input"`
	}
	b.getJSON(t, "/object_info/LoadImage", &info)
	require.JSONEq(t, `["example.png"]`, string(info["LoadImage"].Input.Required["image"][0]))

	ws := b.dial(t, "/ws?clientId=li")
	ws.next()
	id := b.submit(t, workflow(t, "workflow-loadimage.json"), "li")
	ws.until(id)
	_, data, _ := b.get(t, "/view?filename=loadimage_test_00001_.png")
	img, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, 30, img.Bounds().Dx())
	require.Equal(t, 20, img.Bounds().Dy())
	r, g, bl, _ := img.At(5, 5).RGBA()
	require.InDelta(t, 0xEF, r>>8, 1)
	require.InDelta(t, 0xDF, g>>8, 1)
	require.InDelta(t, 0xCF, bl>>8, 1)
}
