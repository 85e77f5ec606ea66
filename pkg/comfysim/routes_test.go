package comfysim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRoutesWithAndWithoutAPIPrefix(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, path := range []string{
		"/prompt", "/queue", "/history", "/object_info", "/object_info/KSampler",
		"/models", "/models/checkpoints", "/embeddings", "/extensions", "/system_stats", "/features",
	} {
		for _, prefix := range []string{"", "/api"} {
			status, body, hdr := b.get(t, prefix+path)
			require.Equal(t, http.StatusOK, status, prefix+path)
			require.Equal(t, "application/json; charset=utf-8", hdr.Get("Content-Type"), prefix+path)
			require.True(t, json.Valid(body), prefix+path)
		}
	}
	// The WebSocket also exists under /api.
	ws := b.dial(t, "/api/ws?clientId=x")
	require.Equal(t, "status", ws.next().Type)
	// Simulator-only routes are not duplicated.
	status, _, _ := b.get(t, "/api/sim/fault")
	require.Equal(t, http.StatusNotFound, status)
}

func TestInfoRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var features map[string]any
	status, raw, _ := b.get(t, "/features")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `{"supports_preview_metadata": true, "max_upload_size": 104857600.0}`, string(raw))
	require.NoError(t, json.Unmarshal(raw, &features))

	var models []string
	b.getJSON(t, "/models", &models)
	require.Equal(t, "checkpoints", models[0])
	require.Contains(t, models, "upscale_models")
	var ckpts []string
	b.getJSON(t, "/models/checkpoints", &ckpts)
	require.Contains(t, ckpts, DefaultCheckpoint)
	status, _, _ = b.get(t, "/models/unet")
	require.Equal(t, http.StatusNotFound, status)
	var emb []string
	b.getJSON(t, "/embeddings", &emb)
	require.Equal(t, []string{"easynegative"}, emb)

	var stats struct {
		System struct {
			OS             string `json:"os"`
			ComfyUIVersion string `json:"comfyui_version"`
		} `json:"system"`
		Devices []struct {
			Name      string `json:"name"`
			Type      string `json:"type"`
			Index     int    `json:"index"`
			VRAMTotal int64  `json:"vram_total"`
			VRAMFree  int64  `json:"vram_free"`
		} `json:"devices"`
	}
	b.getJSON(t, "/system_stats", &stats)
	require.Equal(t, "0.3.64", stats.System.ComfyUIVersion)
	require.Equal(t, "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync", stats.Devices[0].Name)
	require.Equal(t, int64(DefaultVRAMTotal), stats.Devices[0].VRAMTotal)

	// object_info shape of §2.4.
	status, raw, _ = b.get(t, "/object_info/EmptyImage")
	require.Equal(t, http.StatusOK, status)
	require.JSONEq(t, `{"EmptyImage": {
		"input": {"required": {"width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
			"height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
			"batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
			"color": ["INT", {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"}]}},
		"input_order": {"required": ["width", "height", "batch_size", "color"]},
		"output": ["IMAGE"], "output_is_list": [false], "output_name": ["IMAGE"],
		"name": "EmptyImage", "display_name": "EmptyImage", "description": "",
		"python_module": "nodes", "category": "image", "output_node": false}}`, string(raw))
	status, raw, _ = b.get(t, "/object_info/Nope")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "{}", string(raw))

	var all map[string]struct {
		Input struct {
			Required map[string][]json.RawMessage `json:"required"`
			Hidden   map[string]string            `json:"hidden"`
		} `json:"input"`
		OutputNode bool `json:"output_node"`
	}
	b.getJSON(t, "/object_info", &all)
	for _, n := range []string{"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
		"SaveImage", "PreviewImage", "LoadImage", "EmptyImage", "ImageInvert", "ImageBlur", "ImageScale", "ImageScaleBy"} {
		require.Contains(t, all, n)
	}
	require.True(t, all["SaveImage"].OutputNode)
	require.Equal(t, "PROMPT", all["SaveImage"].Input.Hidden["prompt"])
	require.Contains(t, string(all["CheckpointLoaderSimple"].Input.Required["ckpt_name"][0]), DefaultCheckpoint)
	require.Contains(t, string(all["KSampler"].Input.Required["seed"][1]), "18446744073709551615")
}

func TestValidationErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.Models = map[string][]string{} })

	errOf := func(body any) (int, map[string]json.RawMessage) {
		status, raw := b.post(t, "/prompt", body)
		var out map[string]json.RawMessage
		if status == http.StatusBadRequest || status == http.StatusOK {
			require.NoError(t, json.Unmarshal(raw, &out), string(raw))
		}
		return status, out
	}

	status, out := errOf(map[string]any{"client_id": "x"})
	require.Equal(t, http.StatusBadRequest, status)
	require.JSONEq(t, `{"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}`, string(out["error"]))
	require.JSONEq(t, `{}`, string(out["node_errors"]))

	status, out = errOf(map[string]any{"prompt": map[string]any{"1": map[string]any{"inputs": map[string]any{}}}})
	require.Equal(t, http.StatusBadRequest, status)
	require.JSONEq(t, `{"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.", "details": "Node ID '#1'", "extra_info": {}}`, string(out["error"]))

	status, out = errOf(map[string]any{"prompt": map[string]any{"7": map[string]any{"class_type": "Nope", "inputs": map[string]any{}}}})
	require.Equal(t, http.StatusBadRequest, status)
	require.JSONEq(t, `{"type": "invalid_prompt", "message": "Cannot execute because node Nope does not exist.", "details": "Node ID '#7'", "extra_info": {}}`, string(out["error"]))

	status, out = errOf(map[string]any{"prompt": map[string]any{"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{}}}})
	require.Equal(t, http.StatusBadRequest, status)
	require.JSONEq(t, `{"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}`, string(out["error"]))

	// The checkpoint is missing: value_not_in_list on node 10 for output 16.
	status, out = errOf(map[string]any{"prompt": workflow(t, "workflow-txt2img.json")})
	require.Equal(t, http.StatusBadRequest, status)
	var ne map[string]struct {
		Errors []struct {
			Type      string         `json:"type"`
			Message   string         `json:"message"`
			Details   string         `json:"details"`
			ExtraInfo map[string]any `json:"extra_info"`
		} `json:"errors"`
		DependentOutputs []string `json:"dependent_outputs"`
		ClassType        string   `json:"class_type"`
	}
	require.NoError(t, json.Unmarshal(out["node_errors"], &ne))
	require.Len(t, ne, 1)
	require.Equal(t, "CheckpointLoaderSimple", ne["10"].ClassType)
	require.Equal(t, []string{"16"}, ne["10"].DependentOutputs)
	require.Equal(t, "value_not_in_list", ne["10"].Errors[0].Type)
	require.Equal(t, "ckpt_name: 'v1-5-pruned-emaonly-fp16.safetensors' not in []", ne["10"].Errors[0].Details)
	require.Equal(t, []any{[]any{}, map[string]any{"tooltip": "The name of the checkpoint (model) to load."}}, ne["10"].Errors[0].ExtraInfo["input_config"])

	// Min/max, missing input, bad link, and coercion of "20" -> 20.
	prompt := map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 0, "height": "20", "batch_size": 1, "color": 99999999}},
		"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"1", 0}}},
		"3": map[string]any{"class_type": "PreviewImage", "inputs": map[string]any{"images": []any{"1"}}},
	}
	status, out = errOf(map[string]any{"prompt": prompt})
	require.Equal(t, http.StatusBadRequest, status)
	require.NoError(t, json.Unmarshal(out["node_errors"], &ne))
	kinds := func(id string) []string {
		var k []string
		for _, e := range ne[id].Errors {
			k = append(k, e.Type)
		}
		return k
	}
	require.Equal(t, []string{"value_smaller_than_min", "value_bigger_than_max"}, kinds("1"))
	require.Equal(t, "Value 0 smaller than min of 1", ne["1"].Errors[0].Message)
	require.Equal(t, []string{"required_input_missing"}, kinds("2"))
	require.Equal(t, []string{"bad_linked_input"}, kinds("3"))
	// ComfyUI appends every failed output to every failing node seen so
	// far, upstream or not.
	require.Equal(t, []string{"2", "3"}, ne["1"].DependentOutputs)
	var top struct {
		Type    string `json:"type"`
		Details string `json:"details"`
	}
	require.NoError(t, json.Unmarshal(out["error"], &top))
	require.Equal(t, "prompt_outputs_failed_validation", top.Type)
	require.Equal(t, "Required input is missing: filename_prefix\nBad linked input, must be a length-2 list of [node_id, slot_index]: images", top.Details)

	// Partial success: one good output is queued, node_errors non-empty.
	prompt["1"] = map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": "20", "height": 20.9, "batch_size": 1, "color": 0}}
	prompt["3"] = map[string]any{"class_type": "PreviewImage", "inputs": map[string]any{"images": []any{"1", 0}}}
	status, out = errOf(map[string]any{"prompt": prompt, "number": 5})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "5.0", string(out["number"]))
	require.NoError(t, json.Unmarshal(out["node_errors"], &ne))
	require.Contains(t, ne, "2")
	var id string
	require.NoError(t, json.Unmarshal(out["prompt_id"], &id))
	// The stored prompt carries the coerced values.
	ws := b.dial(t, "/ws?clientId=v")
	ws.next()
	var hist map[string]struct {
		Prompt []json.RawMessage `json:"prompt"`
	}
	require.Eventually(t, func() bool {
		status, raw, _ := b.get(t, "/history/"+id)
		return status == http.StatusOK && json.Unmarshal(raw, &hist) == nil && len(hist[id].Prompt) == 5
	}, execWait, 1e7)
	require.Equal(t, "5.0", string(hist[id].Prompt[0]))
	require.Contains(t, string(hist[id].Prompt[2]), `"height": 20,`)
	require.Contains(t, string(hist[id].Prompt[2]), `"width": 20}`)

	// Invalid JSON is aiohttp's plain-text 500.
	status, raw := b.post(t, "/prompt", "{nope")
	require.Equal(t, http.StatusInternalServerError, status)
	require.Contains(t, string(raw), "500 Internal Server Error")
}

func TestNumberCounterAndQueue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Hang the first prompt so the others stay pending.
	b.sim.SetFault(Fault{Kind: FaultHang, Node: "1"})
	wf := workflow(t, "workflow-noweights.json")
	var numbers []string
	for i := 0; i < 3; i++ {
		status, raw := b.post(t, "/prompt", map[string]any{"prompt": wf, "front": i == 2, "prompt_id": fmt.Sprintf("p%d", i)})
		require.Equal(t, http.StatusOK, status)
		var r map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &r))
		numbers = append(numbers, string(r["number"]))
	}
	require.Equal(t, []string{"0", "1", "-2"}, numbers)

	var q struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	require.Eventually(t, func() bool {
		b.getJSON(t, "/queue", &q)
		return len(q.Running) == 1
	}, 5e9, 1e7)
	require.Equal(t, `"p0"`, string(q.Running[0][1]))
	require.Len(t, q.Pending, 2)
	require.Len(t, q.Pending[0], 5)

	var gp map[string]map[string]int
	b.getJSON(t, "/prompt", &gp)
	require.Equal(t, 3, gp["exec_info"]["queue_remaining"])

	status, _ := b.post(t, "/queue", map[string]any{"delete": []string{"p1", "unknown"}})
	require.Equal(t, http.StatusOK, status)
	b.getJSON(t, "/queue", &q)
	require.Len(t, q.Pending, 1)
	require.Equal(t, `"p2"`, string(q.Pending[0][1]))

	// Interrupting another id is a no-op; the right id interrupts.
	ws := b.dial(t, "/ws")
	ws.next()
	status, _ = b.post(t, "/interrupt", map[string]any{"prompt_id": "p2"})
	require.Equal(t, http.StatusOK, status)
	b.getJSON(t, "/queue", &q)
	require.Len(t, q.Running, 1)
	b.sim.SetFault(Fault{})
	status, _ = b.post(t, "/interrupt", map[string]any{"prompt_id": "p0"})
	require.Equal(t, http.StatusOK, status)
	// No client_id: execution_interrupted is broadcast.
	var interrupted wsMsg
	for interrupted.Type != "execution_interrupted" {
		interrupted = ws.next()
	}
	require.JSONEq(t, `{"prompt_id": "p0", "node_id": "1", "node_type": "EmptyImage", "executed": []}`,
		strings.Replace(string(interrupted.Data), string(interrupted.Data[strings.Index(string(interrupted.Data), `, "timestamp"`):len(interrupted.Data)-1]), "", 1))

	var hist map[string]struct {
		Status struct {
			StatusStr string `json:"status_str"`
			Completed bool   `json:"completed"`
		} `json:"status"`
	}
	require.Eventually(t, func() bool {
		b.getJSON(t, "/history/p0", &hist)
		return hist["p0"].Status.StatusStr == "error"
	}, execWait, 1e7)
	require.False(t, hist["p0"].Status.Completed)
	// p2 runs next and succeeds.
	require.Eventually(t, func() bool {
		b.getJSON(t, "/history/p2", &hist)
		return hist["p2"].Status.StatusStr == "success"
	}, execWait, 1e7)

	// History paging: completion order, max_items takes the newest.
	var page map[string]json.RawMessage
	b.getJSON(t, "/history?max_items=1", &page)
	require.Contains(t, page, "p2")
	status, raw, _ := b.get(t, "/history?max_items=1&offset=0")
	require.Equal(t, http.StatusOK, status)
	require.True(t, strings.HasPrefix(string(raw), `{"p0": `))
	status, _, _ = b.get(t, "/history?max_items=x")
	require.Equal(t, http.StatusInternalServerError, status)
	status, _ = b.post(t, "/history", map[string]any{"delete": []string{"p0"}})
	require.Equal(t, http.StatusOK, status)
	b.getJSON(t, "/history", &page)
	require.Len(t, page, 1)
	b.post(t, "/history", map[string]any{"clear": true})
	page = nil
	b.getJSON(t, "/history", &page)
	require.Empty(t, page)
}

func TestUploadRenameAndDedupe(t *testing.T) {
	t.Parallel()
	b := setup(t)
	up := func(name string, content []byte, fields map[string]string) map[string]string {
		status, raw := b.upload(t, "/upload/image", name, content, fields)
		require.Equal(t, http.StatusOK, status, string(raw))
		var out map[string]string
		require.NoError(t, json.Unmarshal(raw, &out))
		return out
	}
	require.Equal(t, map[string]string{"name": "a.png", "subfolder": "", "type": "input"}, up("a.png", []byte("one"), nil))
	// Same bytes: reused, same name.
	require.Equal(t, "a.png", up("a.png", []byte("one"), nil)["name"])
	// Different bytes: renamed.
	require.Equal(t, "a (1).png", up("a.png", []byte("two"), nil)["name"])
	require.Equal(t, "a (2).png", up("a.png", []byte("three"), nil)["name"])
	// Dedupe against a renamed copy.
	require.Equal(t, "a (1).png", up("a.png", []byte("two"), nil)["name"])
	// Overwrite replaces.
	require.Equal(t, "a.png", up("a.png", []byte("four"), map[string]string{"overwrite": "true"})["name"])
	data, err := os.ReadFile(filepath.Join(b.dir, "input", "a.png"))
	require.NoError(t, err)
	require.Equal(t, "four", string(data))
	// Subfolder and type.
	require.Equal(t, map[string]string{"name": "b.png", "subfolder": "sub/dir", "type": "temp"},
		up("b.png", []byte("x"), map[string]string{"subfolder": "sub/dir", "type": "temp"}))
	_, err = os.Stat(filepath.Join(b.dir, "temp", "sub", "dir", "b.png"))
	require.NoError(t, err)
	// Escaping subfolder: 400; unknown type: 500; missing file: 400.
	status, _ := b.upload(t, "/upload/image", "c.png", []byte("x"), map[string]string{"subfolder": "../.."})
	require.Equal(t, http.StatusBadRequest, status)
	status, _ = b.upload(t, "/upload/image", "c.png", []byte("x"), map[string]string{"type": "models"})
	require.Equal(t, http.StatusInternalServerError, status)
	status, _ = b.upload(t, "/upload/image", "", []byte("x"), nil)
	require.Equal(t, http.StatusBadRequest, status)
}

func TestViewRules(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, solidImage(1, 8, 8, 0xFF0000).frame(0)))
	status, _ := b.upload(t, "/upload/image", "v.png", buf.Bytes(), map[string]string{"subfolder": "s"})
	require.Equal(t, http.StatusOK, status)

	check := func(path string, want int) []byte {
		status, body, _ := b.get(t, path)
		require.Equal(t, want, status, path)
		return body
	}
	check("/view", http.StatusNotFound)
	check("/view?filename=", http.StatusBadRequest)
	check("/view?filename=/etc/passwd", http.StatusBadRequest)
	check("/view?filename=..%2Fx.png", http.StatusBadRequest)
	check("/view?filename=v.png&type=models", http.StatusBadRequest)
	check("/view?filename=v.png&type=input&subfolder=../..", http.StatusForbidden)
	check("/view?filename=v.png&type=input", http.StatusNotFound)
	body := check("/view?filename=v.png&type=input&subfolder=s", http.StatusOK)
	require.Equal(t, buf.Bytes(), body)
	// Annotation overrides type; only the basename is used.
	check("/api/view?filename=v.png%20%5Binput%5D&subfolder=s&type=output", http.StatusOK)
	check("/view?filename=x/v.png&type=input&subfolder=s", http.StatusOK)

	_, body, hdr := b.get(t, "/view?filename=v.png&type=input&subfolder=s&preview=jpeg;50")
	require.Equal(t, "image/jpeg", hdr.Get("Content-Type"))
	_, err := jpeg.Decode(bytes.NewReader(body))
	require.NoError(t, err)
	// webp is requested by default, and answered as ComfyUI does.
	_, body, hdr = b.get(t, "/view?filename=v.png&type=input&subfolder=s&preview=webp")
	require.Equal(t, "image/webp", hdr.Get("Content-Type"))
	_, format, err := image.Decode(bytes.NewReader(body))
	require.NoError(t, err)
	require.Equal(t, "webp", format)
	_, body, hdr = b.get(t, "/view?filename=v.png&type=input&subfolder=s&channel=a")
	require.Equal(t, "image/png", hdr.Get("Content-Type"))
	img, err := png.Decode(bytes.NewReader(body))
	require.NoError(t, err)
	r, g, bl, a := img.At(1, 1).RGBA()
	require.Equal(t, []uint32{0, 0, 0, 0xffff}, []uint32{r, g, bl, a})
}

func TestOriginCheckAndCORS(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req, err := http.NewRequest(http.MethodGet, b.url+"/queue", nil)
	require.NoError(t, err)
	req.Header.Set("Origin", "http://localhost:9000")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusForbidden, resp.StatusCode)

	req.Header.Set("Origin", b.url)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// Origin without a port compares hosts only.
	req.Header.Set("Origin", "http://127.0.0.1")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	c := setup(t, func(c *Config) { c.CORSOrigin = "*" })
	req, err = http.NewRequest(http.MethodOptions, c.url+"/prompt", nil)
	require.NoError(t, err)
	req.Header.Set("Origin", "http://elsewhere:1")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "*", resp.Header.Get("Access-Control-Allow-Origin"))
	require.Equal(t, "POST, GET, DELETE, PUT, OPTIONS", resp.Header.Get("Access-Control-Allow-Methods"))
}

func TestBodyLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.MaxUploadSize = 1024 })
	status, _ := b.upload(t, "/upload/image", "big.png", bytes.Repeat([]byte("x"), 4096), nil)
	require.Equal(t, http.StatusRequestEntityTooLarge, status)
	var f map[string]any
	b.getJSON(t, "/features", &f)
	require.Equal(t, 1024.0, f["max_upload_size"])
}
