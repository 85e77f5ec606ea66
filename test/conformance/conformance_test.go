// Package conformance runs the same scripted ComfyUI client sessions against
// the simulator directly and through Atelier (proxy + broker + agent +
// simulator, pkg/stack), and compares what a client sees: status codes, JSON
// shapes (keys and value types, after normalising ids, numbers and
// timestamps that legitimately differ) and WebSocket message sequences.
package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/stack"
)

const (
	user     = "user001"
	password = "pw"
)

// target is one server under test: a base URL (with the participant's
// prefix for Atelier) and its credentials.
type target struct {
	name string
	base string
	auth bool
}

func (tg target) req(t *testing.T, method, path string, body io.Reader, ct string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, tg.base+path, body)
	require.NoError(t, err)
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if tg.auth {
		req.SetBasicAuth(user, password)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

func (tg target) dial(t *testing.T, clientID string) *websocket.Conn {
	t.Helper()
	h := http.Header{}
	if tg.auth {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r.SetBasicAuth(user, password)
		h.Set("Authorization", r.Header.Get("Authorization"))
	}
	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(tg.base, "http")+"/ws?clientId="+clientID,
		&websocket.DialOptions{HTTPHeader: h})
	require.NoError(t, err)
	c.SetReadLimit(8 << 20)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// shape renders a JSON value's structure: object keys (sorted) with the
// shapes of their values, arrays as the set of their element shapes,
// scalars as their type. Maps keyed by ids (history, outputs, node_errors)
// are normalised through idKeyed.
func shape(v any, path string) string {
	switch t := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if idKeyed(path) {
			// Keys are prompt or node ids: compare one value's shape.
			seen := map[string]bool{}
			for _, k := range keys {
				seen[shape(t[k], path+".*")] = true
			}
			return "{*:" + strings.Join(sortedKeys(seen), "|") + "}"
		}
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + ":" + shape(t[k], path+"."+k)
		}
		return "{" + strings.Join(parts, ",") + "}"
	case []any:
		seen := map[string]bool{}
		for _, e := range t {
			seen[shape(e, path+"[]")] = true
		}
		return "[" + strings.Join(sortedKeys(seen), "|") + "]"
	case string:
		return "s"
	case float64:
		return "n"
	case bool:
		return "b"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

func idKeyed(path string) bool {
	for _, suf := range []string{"$history", ".outputs", ".meta", ".node_errors", "$object_info"} {
		if strings.HasSuffix(path, suf) {
			return true
		}
	}
	return false
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func jsonShape(t *testing.T, b []byte, root string) string {
	t.Helper()
	if len(b) == 0 {
		return "<empty>"
	}
	var v any
	if json.Unmarshal(b, &v) != nil {
		// ComfyUI answers most refusals with an empty body, the proxy
		// with a plain-text reason: clients read only the status.
		return "<empty>"
	}
	return shape(v, root)
}

type step struct {
	name, method, path, body, root string
}

// session is the scripted client: uploads, a valid prompt, error cases,
// then every read route; each under / and /api.
func session(t *testing.T, tg target) []string {
	var out []string
	record := func(name string, status int, body []byte, root string) {
		out = append(out, fmt.Sprintf("%s -> %d %s", name, status, jsonShape(t, body, root)))
	}
	wf, err := os.ReadFile("../../pkg/comfysim/testdata/workflow-noweights.json")
	require.NoError(t, err)

	// Upload an input image (and the same again: dedupe).
	png := minimalPNG()
	for i := 0; i < 2; i++ {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		fw, _ := mw.CreateFormFile("image", "example.png")
		_, _ = fw.Write(png)
		_ = mw.Close()
		st, b := tg.req(t, http.MethodPost, "/upload/image", &buf, mw.FormDataContentType())
		record("upload", st, b, "")
		require.Contains(t, string(b), `"example.png"`)
	}

	// A prompt followed over the WebSocket.
	ws := tg.dial(t, "conformance-client")
	var events []string
	readUntil := func(stop func(typ string, data map[string]any) bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for {
			typ, data, err := ws.Read(ctx)
			require.NoError(t, err, "events so far: %v", events)
			if typ == websocket.MessageBinary {
				events = append(events, "binary")
				continue
			}
			var m struct {
				Type string         `json:"type"`
				Data map[string]any `json:"data"`
			}
			require.NoError(t, json.Unmarshal(data, &m))
			// progress_state and status counts are timing-dependent
			// between a local worker and a queue; the durable sequence is
			// what must match.
			if m.Type != "progress_state" && m.Type != "status" {
				events = append(events, m.Type+":"+shape(m.Data, "ws"))
			}
			if stop(m.Type, m.Data) {
				return
			}
		}
	}
	readUntil(func(typ string, _ map[string]any) bool { return typ == "status" })
	st, b := tg.req(t, http.MethodPost, "/prompt", strings.NewReader(`{"prompt": `+string(wf)+`, "client_id": "conformance-client"}`), "application/json")
	record("prompt", st, b, "")
	require.Equal(t, http.StatusOK, st, string(b))
	var acc struct {
		PromptID string `json:"prompt_id"`
	}
	require.NoError(t, json.Unmarshal(b, &acc))
	readUntil(func(typ string, d map[string]any) bool { return typ == "executing" && d["node"] == nil })
	out = append(out, "ws: "+strings.Join(events, " "))

	// Error cases.
	for _, e := range []step{
		{"no prompt", "POST", "/prompt", `{}`, ""},
		{"unknown class", "POST", "/prompt", `{"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}`, ""},
		{"no outputs", "POST", "/prompt", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}}`, ""},
		{"failed validation", "POST", "/prompt", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}`, ""},
		{"missing upload", "POST", "/prompt", `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}`, ""},
		{"view missing", "GET", "/view?filename=nope.png", "", ""},
		{"view no filename", "GET", "/view", "", ""},
		{"view traversal", "GET", "/view?filename=../x.png", "", ""},
		{"view bad type", "GET", "/view?filename=a.png&type=models", "", ""},
		{"history unknown", "GET", "/history/00000000-0000-4000-8000-000000000000", "", ""},
		{"model folder unknown", "GET", "/models/nope", "", ""},
	} {
		for _, prefix := range []string{"", "/api"} {
			st, b := tg.req(t, e.method, prefix+e.path, strings.NewReader(e.body), "application/json")
			record(prefix+" "+e.name, st, b, e.root)
		}
	}

	// Read routes.
	for _, r := range []step{
		{"prompt", "GET", "/prompt", "", ""},
		{"queue", "GET", "/queue", "", ""},
		{"history", "GET", "/history", "", "$history"},
		{"history max", "GET", "/history?max_items=1&offset=0", "", "$history"},
		{"history item", "GET", "/history/" + acc.PromptID, "", "$history"},
		{"view output", "GET", "/view?filename=noweights_00001_.png&subfolder=sim&type=output", "", ""},
		{"view input", "GET", "/view?filename=example.png%20%5Binput%5D", "", ""},
		{"view preview", "GET", "/view?filename=noweights_00001_.png&subfolder=sim&type=output&preview=jpeg;50", "", ""},
		{"view preview webp alpha", "GET", "/view?filename=noweights_00001_.png&subfolder=sim&preview=webp&channel=rgba", "", ""},
		{"view channel rgb", "GET", "/view?filename=noweights_00001_.png&subfolder=sim&channel=rgb", "", ""},
		{"view channel a", "GET", "/view?filename=noweights_00001_.png&subfolder=sim&channel=a", "", ""},
		{"object_info", "GET", "/object_info", "", "$object_info"},
		{"object_info one", "GET", "/object_info/SaveImage", "", "$object_info"},
		{"object_info unknown", "GET", "/object_info/Nope", "", "$object_info"},
		{"embeddings", "GET", "/embeddings", "", ""},
		{"models checkpoints", "GET", "/models/checkpoints", "", ""},
		{"features", "GET", "/features", "", ""},
		{"jobs", "GET", "/api/jobs", "", "$jobs"},
		{"jobs completed", "GET", "/api/jobs?status=completed,failed,cancelled&limit=200&offset=0", "", "$jobs"},
		{"jobs queue", "GET", "/api/jobs?status=in_progress,pending", "", "$jobs"},
		{"job", "GET", "/api/jobs/" + acc.PromptID, "", "$job"},
		{"job unknown", "GET", "/api/jobs/00000000-0000-4000-8000-000000000000", "", ""},
		{"jobs bad status", "GET", "/api/jobs?status=bogus", "", ""},
		{"jobs bad limit", "GET", "/api/jobs?limit=-1", "", ""},
	} {
		for _, prefix := range []string{"", "/api"} {
			st, b := tg.req(t, r.method, prefix+r.path, nil, "")
			record(prefix+" "+r.name, st, b, r.root)
		}
	}
	// Queue and history control: deleting unknown ids, clearing an empty
	// queue and interrupting when nothing runs are quiet no-ops; deleting
	// a finished prompt from the history removes it.
	for _, c := range []step{
		{"queue delete unknown", "POST", "/queue", `{"delete": ["00000000-0000-4000-8000-000000000000"]}`, ""},
		{"queue clear", "POST", "/queue", `{"clear": true}`, ""},
		{"interrupt idle", "POST", "/interrupt", `{}`, ""},
		{"interrupt other", "POST", "/interrupt", `{"prompt_id": "00000000-0000-4000-8000-000000000000"}`, ""},
		{"job cancel unknown", "POST", "/api/jobs/00000000-0000-4000-8000-000000000000/cancel", `{}`, ""},
		{"jobs cancel bad id", "POST", "/api/jobs/cancel", `{"job_ids": ["nope"]}`, ""},
		{"jobs cancel unknown", "POST", "/api/jobs/cancel", `{"job_ids": ["00000000-0000-4000-8000-000000000000"]}`, ""},
		{"history delete", "POST", "/history", `{"delete": ["` + acc.PromptID + `"]}`, ""},
	} {
		st, b := tg.req(t, c.method, c.path, strings.NewReader(c.body), "application/json")
		record(c.name, st, b, c.root)
	}
	// The deletion reaches the proxy's view of the job state asynchronously.
	require.Eventually(t, func() bool {
		_, b := tg.req(t, http.MethodGet, "/history/"+acc.PromptID, nil, "")
		return strings.TrimSpace(string(b)) == "{}"
	}, 5*time.Second, 20*time.Millisecond, "%s: history entry not deleted", tg.name)
	st, b = tg.req(t, http.MethodGet, "/history/"+acc.PromptID, nil, "")
	record("history item deleted", st, b, "$history")
	return out
}

// minimalPNG is a 1×1 PNG.
func minimalPNG() []byte {
	return []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82")
}

func TestConformance(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	sim, err := comfysim.New(comfysim.Config{Dir: t.TempDir(), StepDelay: -1})
	require.NoError(t, err)
	require.NoError(t, sim.Start(ctx, "127.0.0.1:0"))
	t.Cleanup(func() { _ = sim.Close() })

	st, err := stack.Start(ctx, stack.Config{Dir: t.TempDir(), Users: []string{user}, Password: password, GPUs: 1, StepDelay: -1})
	require.NoError(t, err)
	t.Cleanup(func() { st.Stop(context.Background()) })

	direct := session(t, target{name: "simulator", base: sim.URL()})
	through := session(t, target{name: "atelier", base: st.ProxyURL() + "/" + user, auth: true})
	require.Equal(t, len(direct), len(through))
	var diffs []string
	for i := range direct {
		if direct[i] != through[i] && !knownDifference(direct[i], through[i]) {
			diffs = append(diffs, "simulator: "+direct[i]+"\natelier:   "+through[i])
		}
	}
	require.Empty(t, diffs, "\n%s", strings.Join(diffs, "\n\n"))
}

// knownDifference lists documented, deliberate differences (README of this
// package). Every entry needs a reason.
func knownDifference(sim, atelier string) bool {
	return false
}
