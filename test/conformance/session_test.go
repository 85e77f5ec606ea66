package conformance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/pyjson"
)

// idle waits (unrecorded) until the target's queue is empty.
func (r *run) idle(promptPath string) {
	r.t.Helper()
	require.Eventually(r.t, func() bool {
		resp := r.send(http.MethodGet, promptPath, nil)
		return bytes.Contains(resp.body, []byte(`"queue_remaining": 0`)) || bytes.Contains(resp.body, []byte(`"queue_remaining":0`))
	}, 30*time.Second, 10*time.Millisecond, "%s: the queue did not empty", r.tg.name)
}

// readWorkflow loads a testdata workflow of the simulator.
func readWorkflow(r *run, name string) string {
	b, err := os.ReadFile("../../pkg/comfysim/testdata/" + name)
	require.NoError(r.t, err)
	return string(b)
}

// promptID is the prompt_id of a POST /prompt answer ("" when refused).
func promptID(r *run, resp response) string {
	var a struct {
		PromptID string `json:"prompt_id"`
	}
	_ = json.Unmarshal(resp.body, &a)
	return a.PromptID
}

// pngOf is a w×h PNG of one colour with the given alpha.
func pngOf(w, h int, c color.NRGBA) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.SetNRGBA(x, y, c)
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return buf.Bytes()
}

// upload records a multipart upload to path.
func (r *run) upload(name, path, filename string, content []byte, fields map[string]string, o ...stepOpts) response {
	r.t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		_ = mw.WriteField(k, fields[k])
	}
	if content != nil {
		fw, _ := mw.CreateFormFile("image", filename)
		_, _ = fw.Write(content)
	}
	_ = mw.Close()
	var opt stepOpts
	if len(o) > 0 {
		opt = o[0]
	}
	return r.do(name, http.MethodPost, path, buf.String(), mw.FormDataContentType(), opt)
}

// sortPending sorts queue_pending by number: ComfyUI returns its heap's
// array order, which clients sort (README.md).
func sortPending(_ *normalizer, v any) any {
	o, ok := v.(pyjson.Object)
	if !ok {
		return v
	}
	pv, _ := o.Get("queue_pending")
	pending, _ := pv.([]any)
	sort.SliceStable(pending, func(i, j int) bool {
		a, _ := pending[i].([]any)
		b, _ := pending[j].([]any)
		if len(a) == 0 || len(b) == 0 {
			return false
		}
		fa, _ := a[0].(json.Number).Float64()
		fb, _ := b[0].(json.Number).Float64()
		return fa < fb
	})
	return o
}

// modelLibrary drops what /experiment/models reports of the GPU side's
// disks (search paths, file sizes and times), which the pool catalog does
// not carry (README.md).
func modelLibrary(_ *normalizer, v any) any {
	list, ok := v.([]any)
	if !ok {
		return v
	}
	for i, e := range list {
		o, ok := e.(pyjson.Object)
		if !ok {
			continue
		}
		for _, k := range []string{"folders", "modified", "created", "size"} {
			o.Del(k)
		}
		list[i] = o
	}
	return list
}

// byID sorts the jobs of a jobs API answer by id: the order of
// sort_by=execution_duration depends on how long each prompt took here.
func jobsByID(n *normalizer, v any) any {
	o, ok := v.(pyjson.Object)
	if !ok {
		return v
	}
	jv, _ := o.Get("jobs")
	jobs, _ := jv.([]any)
	sort.SliceStable(jobs, func(i, j int) bool {
		a, _ := jobs[i].(pyjson.Object)
		b, _ := jobs[j].(pyjson.Object)
		ia, _ := a.Str("id")
		ib, _ := b.Str("id")
		return n.id(ia) < n.id(ib)
	})
	return o
}

// historyFile digs a file name out of a history answer for later /view
// requests.
func historyFile(r *run, resp response, id, node string) (name, subfolder string) {
	var h map[string]struct {
		Outputs map[string]struct {
			Images []struct {
				Filename  string `json:"filename"`
				Subfolder string `json:"subfolder"`
			} `json:"images"`
		} `json:"outputs"`
	}
	require.NoError(r.t, json.Unmarshal(resp.body, &h))
	imgs := h[id].Outputs[node].Images
	require.NotEmpty(r.t, imgs, "%s: no image of node %s in %s", r.tg.name, node, resp.body)
	return imgs[0].Filename, imgs[0].Subfolder
}

// session is the scripted client of the baseline surface, every route
// under prefix ("" or "/api").
func session(r *run, prefix string) {
	// Under /api the jobs routes are /api/api/jobs (newer ComfyUI
	// registers them as /api/jobs, and the duplication adds /api).
	p := func(path string) string { return prefix + path }
	tag := "[" + prefix + "] "
	nw := readWorkflow(r, "workflow-noweights.json")
	withSigma := func(sigma string) string { return strings.Replace(nw, `"sigma": 1.5`, `"sigma": `+sigma, 1) }
	client := "conformance" + strings.ReplaceAll(prefix, "/", "-")

	// Node, model and environment info.
	for _, path := range []string{
		"/features", "/system_stats", "/embeddings", "/models", "/models/checkpoints", "/models/vae",
		"/models/nope", "/models/unet", "/object_info/SaveImage", "/object_info/LoadImage", "/object_info/Nope",
		"/experiment/models/nope", "/experiment/models/preview/checkpoints/0/" + comfysim.DefaultCheckpoint,
		"/view_metadata/checkpoints?filename=" + comfysim.DefaultCheckpoint, "/view_metadata/checkpoints",
		"/prompt", "/queue",
	} {
		r.get(tag+"GET "+path, p(path))
	}
	r.get(tag+"GET /object_info", p("/object_info"))
	r.get(tag+"GET /experiment/models", p("/experiment/models"), stepOpts{fix: modelLibrary})
	r.get(tag+"GET /experiment/models/checkpoints", p("/experiment/models/checkpoints"), stepOpts{fix: modelLibrary})
	// (free_memory would drop the simulator's execution cache; the proxy's
	// /free has no effect, README.md.)
	r.postJSON(tag+"POST /free", p("/free"), `{"unload_models": true}`)
	r.postJSON(tag+"POST /free invalid", p("/free"), `{`)

	// POST /prompt refusals: nothing of these is queued.
	for _, e := range []struct{ name, body string }{
		{"invalid JSON", `{"prompt": `},
		{"body not an object", `[1, 2]`},
		{"prompt not an object", `{"prompt": [1, 2]}`},
		{"node not an object", `{"prompt": {"1": 5}}`},
		{"bad number", `{"prompt": {}, "number": "abc"}`},
		{"no prompt", `{}`},
		{"missing class_type", `{"prompt": {"1": {"inputs": {}}}}`},
		{"unknown class", `{"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}`},
		{"no outputs", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}}`},
		{"partial target not an output", `{"prompt": ` + nw + `, "partial_execution_targets": ["3"]}`},
		{"required input missing", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}`},
		{"below min", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}`},
		{"above max", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 99999, "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}`},
		{"not a number", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": "wide", "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}`},
		{"combo not in list", strings.Replace(`{"prompt": `+nw+`}`, `"bilinear"`, `"bogus"`, 1)},
		{"link to a missing node", `{"prompt": {"2": {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}}}`},
		{"link of the wrong type", `{"prompt": {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}`},
		{"malformed link", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0, 1], "filename_prefix": "x"}}}}`},
		{"missing upload", `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}`},
		{"missing checkpoint", strings.Replace(`{"prompt": `+readWorkflow(r, "workflow-txt2img.json")+`}`, comfysim.DefaultCheckpoint, "missing.safetensors", 1)},
	} {
		r.postJSON(tag+"POST /prompt "+e.name, p("/prompt"), e.body)
	}

	// Uploads: rename and dedupe rules, overwrite, subfolder, type, masks.
	img := pngOf(4, 3, color.NRGBA{R: 200, G: 10, B: 10, A: 255})
	other := pngOf(4, 3, color.NRGBA{R: 10, G: 200, B: 10, A: 255})
	r.upload(tag+"upload new", p("/upload/image"), "example.png", img, nil)
	r.upload(tag+"upload identical", p("/upload/image"), "example.png", img, nil)
	r.upload(tag+"upload same name, other bytes", p("/upload/image"), "example.png", other, nil)
	r.upload(tag+"upload overwrite", p("/upload/image"), "example (1).png", img, map[string]string{"overwrite": "true"})
	r.upload(tag+"upload subfolder", p("/upload/image"), "example.png", other, map[string]string{"subfolder": "sub"})
	r.upload(tag+"upload temp", p("/upload/image"), "scratch.png", other, map[string]string{"type": "temp"})
	r.upload(tag+"upload no file", p("/upload/image"), "", nil, map[string]string{"subfolder": "x"})
	r.upload(tag+"upload empty file name", p("/upload/image"), "", img, nil)
	r.upload(tag+"upload subfolder escape", p("/upload/image"), "x.png", img, map[string]string{"subfolder": "../escape"})
	r.upload(tag+"upload bad type", p("/upload/image"), "x.png", img, map[string]string{"type": "models"})
	mask := pngOf(4, 3, color.NRGBA{A: 128})
	ref := `{"filename": "example.png", "subfolder": "", "type": "input"}`
	r.upload(tag+"upload mask", p("/upload/mask"), "clipspace-mask.png", mask, map[string]string{"original_ref": ref})
	r.get(tag+"view mask", p("/view?filename=clipspace-mask.png&type=input"))
	r.upload(tag+"upload mask over", p("/upload/mask"), "clipspace-mask.png", mask, map[string]string{"original_ref": ref, "overwrite": "true"})
	r.upload(tag+"upload mask bad ref", p("/upload/mask"), "m.png", mask, map[string]string{"original_ref": "not json"})
	r.get(tag+"GET /object_info/LoadImage after uploads", p("/object_info/LoadImage"))

	// "combo not in list" above was queued for its one valid output; let
	// it finish (the proxy's queue is as fast as a GPU box allows).
	r.idle(p("/prompt"))

	// A prompt followed over the WebSocket, with feature flags.
	ws := r.dial("ws", p("/ws?clientId="+client))
	ws.until(tag+"connect", func(typ string, _ pyjson.Object) bool { return typ == "status" })
	require.NoError(r.t, ws.c.Write(r.ctx, websocket.MessageText, []byte(`{"type": "feature_flags", "data": {"supports_preview_metadata": true, "supports_manager_v4_ui": true}}`)))
	ws.until(tag+"feature_flags", func(typ string, _ pyjson.Object) bool { return typ == "feature_flags" })

	body := fmt.Sprintf(`{"prompt": %s, "client_id": %q, "extra_data": {"extra_pnginfo": {"workflow": {"id": "wf-conformance"}}}}`, nw, client)
	first := promptID(r, r.postJSON(tag+"POST /prompt", p("/prompt"), body))
	require.NotEmpty(r.t, first, r.tg.name)
	ws.until(tag+"prompt", endOf(first))

	// The same prompt again: all cached, old outputs re-sent.
	cached := promptID(r, r.postJSON(tag+"POST /prompt again", p("/prompt"), body))
	ws.until(tag+"cached prompt", endOf(cached))

	// A sampler with previews (this socket advertised metadata: event 4).
	t2i := strings.Replace(readWorkflow(r, "workflow-txt2img.json"), `"steps": 20`, `"steps": 3`, 1)
	prev := promptID(r, r.postJSON(tag+"POST /prompt previews", p("/prompt"),
		fmt.Sprintf(`{"prompt": %s, "client_id": %q, "extra_data": {"preview_method": "auto"}}`, t2i, client)))
	ws.until(tag+"previews", endOf(prev))

	// A node that raises (in SaveImage: its inputs carry a file prefix).
	r.tg.setFault(comfysim.Fault{Kind: comfysim.FaultExecutionError, Node: "5", Message: "disk on fire", Count: 1})
	failed := promptID(r, r.postJSON(tag+"POST /prompt failing", p("/prompt"),
		fmt.Sprintf(`{"prompt": %s, "client_id": %q}`, withSigma("2.5"), client)))
	ws.until(tag+"execution_error", endOf(failed))
	r.tg.setFault(comfysim.Fault{})

	// Some outputs invalid: the prompt runs the others and says so.
	half := `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
	  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "half"}},
	  "3": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 99, "sigma": 1.0}},
	  "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "half"}}}, "client_id": "` + client + `"}`
	partly := promptID(r, r.postJSON(tag+"POST /prompt partly valid", p("/prompt"), half))
	ws.until(tag+"partly valid", endOf(partly))

	// Only the selected output (the frontend's "queue selected outputs").
	partial := promptID(r, r.postJSON(tag+"POST /prompt partial", p("/prompt"),
		fmt.Sprintf(`{"prompt": %s, "client_id": %q, "partial_execution_targets": ["5"]}`, withSigma("3.5"), client)))
	ws.until(tag+"partial", endOf(partial))

	// A prompt without client_id: its progress reaches every socket,
	// nothing else does; a marker prompt of ours shows where it ended.
	anon := promptID(r, r.postJSON(tag+"POST /prompt anonymous", p("/prompt"), fmt.Sprintf(`{"prompt": %s}`, withSigma("4.5"))))
	require.Eventually(r.t, func() bool {
		resp := r.send(http.MethodGet, p("/history/"+anon), nil)
		return bytes.Contains(resp.body, []byte(`"status_str"`))
	}, 20*time.Second, 20*time.Millisecond)
	marker := promptID(r, r.postJSON(tag+"POST /prompt marker", p("/prompt"), body))
	ws.until(tag+"anonymous then marker", endOf(marker))

	// A running prompt, the queue behind it, a reconnect, queue changes,
	// and an interrupt.
	r.tg.setFault(comfysim.Fault{Kind: comfysim.FaultHang, Node: "3", Count: 1})
	running := promptID(r, r.postJSON(tag+"POST /prompt to hang", p("/prompt"),
		fmt.Sprintf(`{"prompt": %s, "client_id": %q}`, withSigma("5.5"), client)))
	ws.until(tag+"running", executingNode("3"))
	r.get(tag+"GET /queue running", p("/queue"), stepOpts{settle: true})
	numbered := promptID(r, r.postJSON(tag+"POST /prompt number", p("/prompt"),
		fmt.Sprintf(`{"prompt": %s, "client_id": %q, "number": 2.5}`, withSigma("6.5"), client)))
	front := promptID(r, r.postJSON(tag+"POST /prompt front", p("/prompt"),
		fmt.Sprintf(`{"prompt": %s, "client_id": %q, "front": true}`, withSigma("7.5"), client)))
	chosen := "6f1c2a4e-1b2f-4c3d-9e8a-0c1d2e3f4a5" + map[string]string{"": "b", "/api": "c"}[prefix]
	r.postJSON(tag+"POST /prompt client prompt_id", p("/prompt"),
		fmt.Sprintf(`{"prompt": %s, "client_id": %q, "prompt_id": %q, "partial_execution_targets": ["5"]}`, withSigma("8.5"), client, chosen))
	r.get(tag+"GET /queue four", p("/queue"), stepOpts{settle: true, fix: sortPending})
	r.get(tag+"GET /prompt four", p("/prompt"), stepOpts{settle: true})
	r.get(tag+"GET /api/jobs queue", p("/api/jobs?status=in_progress,pending"), stepOpts{settle: true})
	r.get(tag+"GET /history/ of a pending prompt", p("/history/"+numbered))
	r.get(tag+"GET /api/jobs/ of a pending prompt", p("/api/jobs/"+front), stepOpts{settle: true})

	// The browser reconnects with the same client id: it is told what
	// runs.
	_ = ws.c.CloseNow()
	ws = r.dial("ws", p("/ws?clientId="+client))
	ws.until(tag+"reconnect", executingNode("3"))

	r.postJSON(tag+"POST /queue delete", p("/queue"), fmt.Sprintf(`{"delete": [%q, "00000000-0000-4000-8000-000000000000"]}`, numbered))
	r.get(tag+"GET /queue after delete", p("/queue"), stepOpts{settle: true, fix: sortPending})
	r.postJSON(tag+"POST /queue clear", p("/queue"), `{"clear": true}`)
	r.get(tag+"GET /queue after clear", p("/queue"), stepOpts{settle: true})
	r.postJSON(tag+"POST /interrupt another id", p("/interrupt"), `{"prompt_id": "00000000-0000-4000-8000-000000000000"}`)
	r.postJSON(tag+"POST /interrupt", p("/interrupt"), fmt.Sprintf(`{"prompt_id": %q}`, running))
	ws.until(tag+"interrupted", endOf(running))
	r.postJSON(tag+"POST /interrupt idle", p("/interrupt"), ``)
	r.postJSON(tag+"POST /interrupt invalid body", p("/interrupt"), `{`)
	r.postJSON(tag+"POST /queue invalid body", p("/queue"), `{`)

	// Cancel a queued prompt through the jobs API, and one running.
	r.tg.setFault(comfysim.Fault{Kind: comfysim.FaultHang, Node: "3", Count: 1})
	hung := promptID(r, r.postJSON(tag+"POST /prompt to cancel running", p("/prompt"),
		fmt.Sprintf(`{"prompt": %s, "client_id": %q}`, withSigma("9.5"), client)))
	ws.until(tag+"running again", executingNode("3"))
	queued := promptID(r, r.postJSON(tag+"POST /prompt to cancel queued", p("/prompt"),
		fmt.Sprintf(`{"prompt": %s, "client_id": %q}`, withSigma("1.25"), client)))
	r.get(tag+"GET /queue before cancel", p("/queue"), stepOpts{settle: true, fix: sortPending})
	r.postJSON(tag+"POST /api/jobs/cancel", p("/api/jobs/cancel"), fmt.Sprintf(`{"job_ids": [%q]}`, queued))
	r.get(tag+"GET /queue after cancel", p("/queue"), stepOpts{settle: true})
	r.postJSON(tag+"POST /api/jobs/{id}/cancel", p("/api/jobs/"+hung+"/cancel"), `{}`)
	ws.until(tag+"cancelled while running", endOf(hung))

	// History.
	h := r.get(tag+"GET /history/{id}", p("/history/"+first), stepOpts{ordered: true})
	outName, outSub := historyFile(r, h, first, "5")
	tempName, _ := historyFile(r, h, first, "6")
	for _, path := range []string{
		"/history", "/history?max_items=3", "/history?max_items=2&offset=1", "/history?offset=2",
		"/history?max_items=0", "/history/" + failed, "/history/" + running, "/history/" + hung,
		"/history/" + queued, "/history/" + partial, "/history/" + partly, "/history/" + cached, "/history/" + prev,
		"/history/00000000-0000-4000-8000-000000000000",
	} {
		r.get(tag+"GET "+path, p(path), stepOpts{ordered: true, settle: true})
	}
	r.get(tag+"GET /history bad max_items", p("/history?max_items=many"))
	r.get(tag+"GET /history bad offset", p("/history?offset=x"))

	// The jobs API.
	for _, path := range []string{
		"/api/jobs", "/api/jobs?status=completed,failed,cancelled&limit=200&offset=0",
		"/api/jobs?status=in_progress,pending", "/api/jobs?status=failed", "/api/jobs?status=cancelled",
		"/api/jobs?sort_order=asc", "/api/jobs?limit=2&offset=1", "/api/jobs?offset=100", "/api/jobs?workflow_id=wf-conformance",
		"/api/jobs/" + first, "/api/jobs/" + failed, "/api/jobs/" + running, "/api/jobs/" + queued,
		"/api/jobs/00000000-0000-4000-8000-000000000000",
		"/api/jobs?status=bogus", "/api/jobs?sort_by=bogus", "/api/jobs?sort_order=sideways", "/api/jobs?limit=-1",
		"/api/jobs?limit=many", "/api/jobs?offset=-1",
	} {
		r.get(tag+"GET "+path, p(path), stepOpts{settle: true})
	}
	r.get(tag+"GET /api/jobs by duration", p("/api/jobs?sort_by=execution_duration&sort_order=asc"), stepOpts{fix: jobsByID})
	r.postJSON(tag+"POST /api/jobs/{id}/cancel finished", p("/api/jobs/"+first+"/cancel"), `{}`)
	r.postJSON(tag+"POST /api/jobs/cancel unknown", p("/api/jobs/cancel"), `{"job_ids": ["00000000-0000-4000-8000-000000000000"]}`)
	r.postJSON(tag+"POST /api/jobs/cancel malformed id", p("/api/jobs/cancel"), `{"job_ids": ["nope"]}`)
	r.postJSON(tag+"POST /api/jobs/cancel not a list", p("/api/jobs/cancel"), `{"job_ids": "nope"}`)

	// /view: types, annotations, subfolders, Range, previews, channels and
	// the refusals.
	q := func(kv ...string) string {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return "/view?" + v.Encode()
	}
	disp := stepOpts{headers: []string{"Content-Disposition"}}
	for _, c := range []struct{ name, path string }{
		{"output", q("filename", outName, "subfolder", outSub, "type", "output")},
		{"output by default", q("filename", outName, "subfolder", outSub)},
		{"annotated output", q("filename", outName+" [output]", "subfolder", outSub, "type", "input")},
		{"temp", q("filename", tempName, "type", "temp")},
		{"input", q("filename", "example.png", "type", "input")},
		{"annotated input", q("filename", "example.png [input]")},
		{"input subfolder", q("filename", "example.png", "subfolder", "sub", "type", "input")},
		{"uploaded temp", q("filename", "scratch.png", "type", "temp")},
		{"dir in filename", q("filename", "sub/example.png", "type", "input")},
		{"preview jpeg", q("filename", outName, "subfolder", outSub, "preview", "jpeg;50")},
		{"preview webp", q("filename", outName, "subfolder", outSub, "preview", "webp")},
		{"channel rgb", q("filename", outName, "subfolder", outSub, "channel", "rgb")},
		{"channel a", q("filename", outName, "subfolder", outSub, "channel", "a")},
		{"no filename", "/view"},
		{"empty filename", q("filename", "")},
		{"traversal", q("filename", "../secret.png")},
		{"absolute", q("filename", "/etc/passwd")},
		{"subfolder escape", q("filename", "example.png", "subfolder", "../../..", "type", "input")},
		{"bad type", q("filename", "example.png", "type", "models")},
		{"missing", q("filename", "nope.png")},
		{"cache buster", q("filename", "example.png", "type", "input", "rand", "0.123")},
	} {
		r.get(tag+"GET /view "+c.name, p(c.path), disp)
	}
	for _, c := range []struct{ name, path, rng string }{
		{"input", q("filename", "example.png", "type", "input"), "bytes=0-15"},
		{"input suffix", q("filename", "example.png", "type", "input"), "bytes=-8"},
		{"input past the end", q("filename", "example.png", "type", "input"), "bytes=100000-"},
		{"output", q("filename", outName, "subfolder", outSub), "bytes=0-15"},
	} {
		rng := r.send(http.MethodGet, p(c.path), nil, "Range", c.rng)
		r.record(tag+"GET /view Range "+c.name, r.describe(r.n, rng, false, "Content-Range", "Content-Length"))
	}

	// Forgetting history.
	r.postJSON(tag+"POST /history delete", p("/history"), fmt.Sprintf(`{"delete": [%q]}`, first))
	r.get(tag+"GET /history/{id} deleted", p("/history/"+first), stepOpts{settle: true})
	r.get(tag+"GET /api/jobs/{id} deleted", p("/api/jobs/"+first), stepOpts{settle: true})
	r.postJSON(tag+"POST /history invalid body", p("/history"), `[1]`)
	r.postJSON(tag+"POST /history clear", p("/history"), `{"clear": true}`)
	r.get(tag+"GET /history cleared", p("/history"), stepOpts{settle: true})
	r.get(tag+"GET /api/jobs cleared", p("/api/jobs"), stepOpts{settle: true})
	_ = ws.c.CloseNow()
}

// newerSession covers what 2026-era servers answer differently.
func newerSession(r *run, prefix string) {
	tag := "[" + prefix + "] "
	p := func(path string) string { return prefix + path }
	nw := readWorkflow(r, "workflow-noweights.json")
	for _, e := range []struct{ name, body string }{
		{"unknown class", `{"prompt": {"1": {"class_type": "Nope", "inputs": {}, "_meta": {"title": "My node"}}}}`},
		{"unknown class without title", `{"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}`},
		{"missing class_type", `{"prompt": {"1": {"inputs": {}, "_meta": {"title": "Untyped"}}}}`},
		{"prompt_id not a UUID", `{"prompt": ` + nw + `, "prompt_id": "my-prompt"}`},
		{"prompt_id upper case", `{"prompt": ` + nw + `, "prompt_id": "6F1C2A4E-1B2F-4C3D-9E8A-0C1D2E3F4A5B"}`},
		{"prompt_id not a string", `{"prompt": ` + nw + `, "prompt_id": 5}`},
		{"prompt_id null", `{"prompt": ` + nw + `, "prompt_id": null}`},
		{"prompt_id", `{"prompt": ` + nw + `, "prompt_id": "0d9e0c1a-2b3c-4d5e-8f70-8192a3b4c5d` + map[string]string{"": "6", "/api": "7"}[prefix] + `"}`},
	} {
		r.postJSON(tag+"POST /prompt "+e.name, p("/prompt"), e.body)
	}
}
