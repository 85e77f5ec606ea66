package stack

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/proxy"
	"github.com/atelier-run/atelier/pkg/registry"
)

// cpuUI stands in for the participant's own ComfyUI UI (the CPU-only
// ComfyUI on mello that serves the frontend, settings and user data): no
// Python ComfyUI exists here. It keeps settings and userdata files in
// memory with ComfyUI's semantics where the replay checks them (the
// userdata file name is one path segment, %2F kept escaped), applies the
// loopback origin check, and records what reached it.
type cpuUI struct {
	mu       sync.Mutex
	seen     []string
	settings map[string]json.RawMessage
	files    map[string][]byte
}

func (u *cpuUI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	line := r.Method + " " + r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		line += "?" + r.URL.RawQuery
	}
	u.seen = append(u.seen, line)
	path := strings.TrimPrefix(r.URL.EscapedPath(), "/api")
	body, _ := io.ReadAll(r.Body)
	switch {
	case path == "/" && r.Method == http.MethodGet:
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<!doctype html><title>ComfyUI</title>")
	case path == "/users":
		_, _ = io.WriteString(w, `{"storage": "server", "migrated": true}`)
	case path == "/settings" && r.Method == http.MethodGet:
		b, _ := json.Marshal(u.settings)
		_, _ = w.Write(b)
	case strings.HasPrefix(path, "/settings/") && r.Method == http.MethodPost:
		u.settings[strings.TrimPrefix(path, "/settings/")] = body
	case path == "/userdata" && r.Method == http.MethodGet:
		names := []string{}
		for n := range u.files {
			if d := r.URL.Query().Get("dir"); strings.HasPrefix(n, d+"/") {
				names = append(names, strings.TrimPrefix(n, d+"/"))
			}
		}
		b, _ := json.Marshal(names)
		_, _ = w.Write(b)
	case strings.HasPrefix(path, "/userdata/"):
		seg := strings.TrimPrefix(path, "/userdata/")
		if strings.Contains(seg, "/") {
			w.WriteHeader(http.StatusNotFound) // one segment: %2F must arrive escaped
			return
		}
		name, _ := url.PathUnescape(seg)
		switch r.Method {
		case http.MethodPost:
			u.files[name] = body
			b, _ := json.Marshal(name)
			_, _ = w.Write(b)
		case http.MethodGet:
			b, ok := u.files[name]
			if !ok {
				w.WriteHeader(http.StatusNotFound)
				return
			}
			_, _ = w.Write(b)
		}
	case path == "/extensions":
		_, _ = io.WriteString(w, `["/extensions/core/clipspace.js"]`)
	case path == "/i18n", path == "/workflow_templates":
		_, _ = io.WriteString(w, `{}`)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (u *cpuUI) take() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := u.seen
	u.seen = nil
	return out
}

// The request sequence a ComfyUI frontend makes when it loads, when the
// participant queues two prompts and cancels the waiting one, and when
// the history panel is opened again (comfyui-api.md §1.1, §2, §3), through
// the proxy with the participant's own UI upstream and the real broker,
// agent and simulator: the UI's own routes reach the participant's UI with
// %2F intact and the origin check passing, the execution routes never do,
// and every answer is what the frontend needs to go on.
func TestFrontendReplay(t *testing.T) {
	t.Parallel()
	ui := &cpuUI{settings: map[string]json.RawMessage{}, files: map[string][]byte{}}
	uiSrv := newHTTPServer(t, ui)
	var upstream atomic.Pointer[proxy.UIUpstream]
	tb := startStack(t, Config{Users: []string{"user001"}, UIFallback: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstream.Load().ServeHTTP(w, r)
	})})
	up, err := proxy.NewUIUpstream(proxy.UIUpstreamConfig{Registry: tb.stack.Registry})
	require.NoError(t, err)
	upstream.Store(up)
	_, err = tb.stack.Registry.Update(tb.ctx, "user001", func(u *registry.User) error { u.UIUpstream = uiSrv; return nil })
	require.NoError(t, err)

	base := tb.stack.ProxyURL() + "/user001"
	call := func(method, path, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(tb.ctx, method, base+path, strings.NewReader(body))
		req.SetBasicAuth("user001", "pw")
		req.Header.Set("Origin", tb.stack.ProxyURL()) // the browser's origin is the proxy's
		req.Header.Set("Comfy-User", "")
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	getJSON := func(path string, v any) {
		t.Helper()
		code, b := call(http.MethodGet, path, "")
		require.Equal(t, http.StatusOK, code, "%s: %s", path, b)
		require.NoError(t, json.Unmarshal(b, v), "%s: %s", path, b)
	}

	// 1. Load. The UI's own routes.
	code, b := call(http.MethodGet, "/", "")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(b), "<title>ComfyUI</title>")
	var users map[string]any
	getJSON("/api/users", &users)
	require.Equal(t, "server", users["storage"])
	code, _ = call(http.MethodPost, "/api/settings/Comfy.ColorPalette", `"dark"`)
	require.Equal(t, http.StatusOK, code)
	var settings map[string]any
	getJSON("/api/settings", &settings)
	require.Equal(t, "dark", settings["Comfy.ColorPalette"])
	wfDoc := `{"id": "wf-replay", "nodes": [], "links": []}`
	code, _ = call(http.MethodPost, "/api/userdata/workflows%2Freplay.json?overwrite=true&full_info=true", wfDoc)
	require.Equal(t, http.StatusOK, code)
	var listed []string
	getJSON("/api/userdata?dir=workflows&recurse=true&split=false&full_info=false", &listed)
	require.Equal(t, []string{"replay.json"}, listed)
	code, b = call(http.MethodGet, "/api/userdata/workflows%2Freplay.json", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, wfDoc, string(b))
	var exts []string
	getJSON("/api/extensions", &exts)
	require.NotEmpty(t, exts)
	require.Equal(t, []string{
		"GET /", "GET /api/users", "POST /api/settings/Comfy.ColorPalette", "GET /api/settings",
		"POST /api/userdata/workflows%2Freplay.json?overwrite=true&full_info=true",
		"GET /api/userdata?dir=workflows&recurse=true&split=false&full_info=false",
		"GET /api/userdata/workflows%2Freplay.json", "GET /api/extensions",
	}, ui.take())

	// The GPU side's routes, from the pool catalog.
	var stats struct {
		System  map[string]any   `json:"system"`
		Devices []map[string]any `json:"devices"`
	}
	getJSON("/api/system_stats", &stats)
	require.Equal(t, "0.3.64", stats.System["comfyui_version"])
	require.NotEmpty(t, stats.Devices, "the GPU box's devices")
	var features map[string]any
	getJSON("/api/features", &features)
	require.Equal(t, true, features["supports_preview_metadata"])
	var objectInfo map[string]json.RawMessage
	getJSON("/api/object_info", &objectInfo)
	require.Contains(t, objectInfo, "KSampler")
	require.Contains(t, string(objectInfo["CheckpointLoaderSimple"]), comfysim.DefaultCheckpoint, "the GPU side's models")
	var embeddings []string
	getJSON("/api/embeddings", &embeddings)
	var modelFolders []map[string]any
	getJSON("/api/experiment/models", &modelFolders)
	require.Equal(t, "checkpoints", modelFolders[0]["name"])
	var queue struct {
		Running []any `json:"queue_running"`
		Pending []any `json:"queue_pending"`
	}
	getJSON("/api/queue", &queue)
	require.Empty(t, queue.Running)
	var history map[string]any
	getJSON("/api/history?max_items=200", &history)
	require.Empty(t, history)

	// The socket, with the flags the frontend sends.
	sid := "0123456789abcdef0123456789abcde0"
	ws := tb.dial(t, "user001", sid)
	require.NoError(t, ws.Write(tb.ctx, websocket.MessageText,
		[]byte(`{"type": "feature_flags", "data": {"supports_preview_metadata": true, "supports_manager_v4_ui": true, "supports_progress_text_metadata": true}}`)))

	// 2. Queue two prompts; the first is held in ImageBlur so the second
	// waits. The frontend sends the UI graph in extra_pnginfo.
	for _, sim := range tb.stack.Runtime.Simulators() {
		sim.SetFault(comfysim.Fault{Kind: comfysim.FaultHang, Node: "3", Count: 1})
	}
	queuePrompt := func(sigma int) string {
		t.Helper()
		wf := bytes.TrimSpace(workflow(t, sigma))
		body := fmt.Sprintf(`{"client_id": %q, "prompt": %s, "extra_data": {"extra_pnginfo": {"workflow": %s}}}`,
			sid, extractPrompt(t, wf), wfDoc)
		code, b := call(http.MethodPost, "/api/prompt", body)
		require.Equal(t, http.StatusOK, code, string(b))
		var r struct {
			PromptID   string         `json:"prompt_id"`
			Number     float64        `json:"number"`
			NodeErrors map[string]any `json:"node_errors"`
		}
		require.NoError(t, json.Unmarshal(b, &r))
		require.Empty(t, r.NodeErrors)
		return r.PromptID
	}
	// Both are cancelled right after they are queued, whatever ComfyUI is
	// doing with them at that moment (staged, pending in its queue, about
	// to start, held in the blur): the agent makes the interrupt take.
	first := queuePrompt(1)
	waiting := queuePrompt(2)
	require.Eventually(t, func() bool {
		getJSON("/api/queue", &queue)
		return len(queue.Running) == 1 && len(queue.Pending) == 1
	}, testutil.WaitTimeout(), 20*time.Millisecond)
	require.Equal(t, first, queue.Running[0].([]any)[1])
	require.Len(t, queue.Pending, 1)
	require.Equal(t, waiting, queue.Pending[0].([]any)[1])
	var jobs struct {
		Jobs []map[string]any `json:"jobs"`
	}
	getJSON("/api/jobs?status=in_progress,pending", &jobs)
	require.Len(t, jobs.Jobs, 2)

	// Cancel the one that waits (queue panel), then stop the running one
	// (its Cancel is an interrupt with its id).
	code, _ = call(http.MethodPost, "/api/queue", fmt.Sprintf(`{"delete": [%q]}`, waiting))
	require.Equal(t, http.StatusOK, code)
	code, _ = call(http.MethodPost, "/api/interrupt", fmt.Sprintf(`{"prompt_id": %q}`, first))
	require.Equal(t, http.StatusOK, code)
	seen := finished(t, tb.ctx, ws, 1)
	require.Equal(t, []string{"execution_interrupted", "executing"}, seen[first][len(seen[first])-2:])
	require.NotContains(t, seen, waiting, "the cancelled prompt never ran")
	// The hang is for the first prompt only, which may have been stopped
	// before it reached the blur.
	for _, sim := range tb.stack.Runtime.Simulators() {
		sim.SetFault(comfysim.Fault{})
	}

	// A third runs to the end.
	done := queuePrompt(3)
	seen = finished(t, tb.ctx, ws, 1)
	require.Equal(t, []string{"execution_start", "execution_cached"}, seen[done][:2])
	require.Contains(t, seen[done], "executed")
	require.Contains(t, seen[done], "execution_success")

	// 3. Re-open history: the finished and the interrupted prompt, newest
	// last, the workflow the frontend loads back, and the thumbnails.
	getJSON("/api/queue", &queue)
	require.Empty(t, queue.Running)
	require.Empty(t, queue.Pending)
	var hist map[string]struct {
		Prompt  []json.RawMessage                      `json:"prompt"`
		Outputs map[string]map[string][]map[string]any `json:"outputs"`
		Status  struct {
			StatusStr string `json:"status_str"`
		} `json:"status"`
	}
	getJSON("/api/history?max_items=200", &hist)
	require.Len(t, hist, 2, "the cancelled prompt left no entry")
	require.Equal(t, "error", hist[first].Status.StatusStr)
	require.Equal(t, "success", hist[done].Status.StatusStr)
	var extra struct {
		ClientID string `json:"client_id"`
		PNGInfo  struct {
			Workflow json.RawMessage `json:"workflow"`
		} `json:"extra_pnginfo"`
	}
	require.NoError(t, json.Unmarshal(hist[done].Prompt[3], &extra))
	require.Equal(t, sid, extra.ClientID)
	require.JSONEq(t, wfDoc, string(extra.PNGInfo.Workflow))
	for _, node := range []string{"5", "6"} {
		img := hist[done].Outputs[node]["images"][0]
		q := url.Values{"filename": {img["filename"].(string)}, "subfolder": {img["subfolder"].(string)},
			"type": {img["type"].(string)}, "rand": {"0.5"}}
		for _, preview := range []string{"", "webp;50"} {
			if preview != "" {
				q.Set("preview", preview)
			}
			code, b := call(http.MethodGet, "/api/view?"+q.Encode(), "")
			require.Equal(t, http.StatusOK, code, q.Encode())
			require.NotEmpty(t, b)
		}
	}
	getJSON("/api/jobs?status=completed,failed,cancelled&limit=200&offset=0", &jobs)
	require.Len(t, jobs.Jobs, 2)
	require.Equal(t, done, jobs.Jobs[0]["id"], "newest first")
	require.Equal(t, "completed", jobs.Jobs[0]["status"])
	require.Equal(t, "wf-replay", jobs.Jobs[0]["workflow_id"])
	require.Equal(t, "cancelled", jobs.Jobs[1]["status"], "an interrupted prompt")
	var job map[string]any
	getJSON("/api/jobs/"+done, &job)
	require.Equal(t, map[string]any{"id": "wf-replay", "nodes": []any{}, "links": []any{}},
		job["workflow"].(map[string]any)["extra_data"].(map[string]any)["extra_pnginfo"].(map[string]any)["workflow"])
	code, _ = call(http.MethodGet, "/api/jobs/"+waiting, "")
	require.Equal(t, http.StatusNotFound, code)

	require.Empty(t, ui.take(), "execution routes never reach the participant's UI")
	st, err := tb.stack.Broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, st.Finished["cancelled"])
	require.Equal(t, 1, st.Finished["interrupted"])
	require.Equal(t, 1, st.Finished["succeeded"])
}

// newHTTPServer serves h on loopback for the test and returns its URL.
func newHTTPServer(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// extractPrompt pulls the prompt object out of workflow()'s request body.
func extractPrompt(t *testing.T, body []byte) string {
	t.Helper()
	var r struct {
		Prompt json.RawMessage `json:"prompt"`
	}
	require.NoError(t, json.Unmarshal(body, &r))
	return string(r.Prompt)
}
