package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfysim"
)

// queueIDs is the prompt ids of a participant's GET /queue, running and
// pending.
func (tb *testBundle) queueIDs(t *testing.T, user string) (running, pending []string) {
	t.Helper()
	code, body := tb.do(t, user, http.MethodGet, "/queue", nil)
	require.Equal(t, http.StatusOK, code)
	var q struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	require.NoError(t, json.Unmarshal(body, &q))
	id := func(tuple []json.RawMessage) string {
		var s string
		require.NoError(t, json.Unmarshal(tuple[1], &s))
		return s
	}
	for _, tu := range q.Running {
		running = append(running, id(tu))
	}
	for _, tu := range q.Pending {
		pending = append(pending, id(tu))
	}
	return running, pending
}

// Every route with another participant's prompt id, file name or
// subfolder, through the real broker and agent: it gives the other
// participant nothing (an empty answer, 403 or 404 as ComfyUI would) and
// changes nothing of the owner's.
func TestParticipantsAreIsolated(t *testing.T) {
	t.Parallel()
	tb := startStack(t, Config{Users: []string{"user001", "user002"}})
	const alice, bob = "user001", "user002"
	sid := "00000000000000000000000000000c01" // both participants use it

	// Alice: a finished prompt with outputs, an upload in a subfolder, a
	// running prompt (stuck in ImageBlur) and one queued behind it.
	done := tb.submit(t, alice, bytes.Replace(workflow(t, 1), []byte(`"client_id": ""`), []byte(`"client_id": "`+sid+`"`), 1))
	entry := tb.history(t, alice, done)
	img := entry["outputs"].(map[string]any)["5"].(map[string]any)["images"].([]any)[0].(map[string]any)
	outName, outSub := img["filename"].(string), img["subfolder"].(string)
	png := []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82")
	require.Equal(t, "private.png", tb.upload(t, alice, "private.png", "secret", png))

	for _, sim := range tb.stack.Runtime.Simulators() {
		sim.SetFault(comfysim.Fault{Kind: comfysim.FaultHang, Node: "3", Count: 1})
	}
	aliceWS := tb.dial(t, alice, sid)
	running := tb.submit(t, alice, bytes.Replace(workflow(t, 2), []byte(`"client_id": ""`), []byte(`"client_id": "`+sid+`"`), 1))
	queued := tb.submit(t, alice, workflow(t, 3))
	require.Eventually(t, func() bool {
		r, p := tb.queueIDs(t, alice)
		return len(r) == 1 && r[0] == running && len(p) == 1 && p[0] == queued
	}, testutil.WaitTimeout(), 20*time.Millisecond)

	// Bob's socket claims Alice's client id: it must hear nothing of hers.
	bobWS := tb.dial(t, bob, sid)

	// Bob, with Alice's ids and names, under his own prefix.
	for _, c := range []struct {
		method, path, body string
		code               int
		want               string // exact body, "" for any
	}{
		{"GET", "/history/" + done, "", 200, "{}"},
		{"GET", "/api/history/" + running, "", 200, "{}"},
		{"GET", "/history", "", 200, "{}"},
		{"GET", "/api/jobs/" + done, "", 404, `{"error": "Job not found"}`},
		{"GET", "/api/jobs/" + running, "", 404, `{"error": "Job not found"}`},
		{"GET", "/api/jobs", "", 200, `{"jobs": [], "pagination": {"offset": 0, "limit": null, "total": 0, "has_more": false}}`},
		{"GET", "/queue", "", 200, `{"queue_running": [], "queue_pending": []}`},
		{"GET", "/prompt", "", 200, `{"exec_info": {"queue_remaining": 0}}`},
		{"POST", "/interrupt", `{"prompt_id": "` + running + `"}`, 200, ""},
		{"POST", "/interrupt", `{}`, 200, ""},
		{"POST", "/api/interrupt", ``, 200, ""},
		{"POST", "/queue", `{"delete": ["` + queued + `"]}`, 200, ""},
		{"POST", "/queue", `{"clear": true}`, 200, ""},
		{"POST", "/api/jobs/" + queued + "/cancel", `{}`, 200, `{"cancelled": false}`},
		{"POST", "/api/jobs/" + running + "/cancel", `{}`, 200, `{"cancelled": false}`},
		{"POST", "/api/jobs/cancel", `{"job_ids": ["` + queued + `", "` + running + `"]}`, 200, `{"cancelled": false}`},
		{"POST", "/history", `{"delete": ["` + done + `"]}`, 200, ""},
		{"POST", "/history", `{"clear": true}`, 200, ""},
		{"GET", "/view?filename=" + outName + "&subfolder=" + outSub + "&type=output", "", 404, ""},
		{"GET", "/view?filename=" + outName + "%20%5Boutput%5D&subfolder=" + outSub, "", 404, ""},
		{"GET", "/view?filename=private.png&subfolder=secret&type=input", "", 404, ""},
		{"GET", "/view?filename=private.png&subfolder=../user001/input/secret&type=input", "", 403, ""},
		{"GET", "/view?filename=private.png&subfolder=../../user001/input/secret&type=input", "", 403, ""},
	} {
		code, body := tb.do(t, bob, c.method, c.path, []byte(c.body))
		require.Equal(t, c.code, code, "%s %s: %s", c.method, c.path, body)
		if c.want != "" {
			require.JSONEq(t, c.want, string(body), "%s %s", c.method, c.path)
		}
	}
	// A mask painted on Alice's file, and a prompt loading it.
	var mb bytes.Buffer
	mw := multipart.NewWriter(&mb)
	fw, _ := mw.CreateFormFile("image", "mask.png")
	_, _ = fw.Write(png)
	_ = mw.WriteField("original_ref", `{"filename": "private.png", "subfolder": "secret", "type": "input"}`)
	_ = mw.Close()
	req, _ := http.NewRequestWithContext(tb.ctx, http.MethodPost, tb.stack.ProxyURL()+"/"+bob+"/upload/mask", &mb)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.SetBasicAuth(bob, "pw")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "another participant's original")
	code, body := tb.post(t, bob, []byte(`{"prompt": {
	  "1": {"class_type": "LoadImage", "inputs": {"image": "secret/private.png"}},
	  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "stolen"}}}}`))
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, string(body), "Invalid image file: secret/private.png")

	// Bob under Alice's prefix: refused outright.
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		req, _ := http.NewRequestWithContext(tb.ctx, m, tb.stack.ProxyURL()+"/"+alice+"/queue", bytes.NewReader([]byte(`{"clear": true}`)))
		req.SetBasicAuth(bob, "pw")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusForbidden, resp.StatusCode, m)
	}

	// Alice's jobs are as they were. The broker answered each of Bob's
	// requests after deciding it, so a wrong cancel would already be in
	// JOBS; the outcomes below, which come after, are the proof.
	r, p := tb.queueIDs(t, alice)
	require.Equal(t, []string{running}, r)
	require.Equal(t, []string{queued}, p)

	// Alice interrupts her own: it ends interrupted, the queued one runs.
	code, _ = tb.do(t, alice, http.MethodPost, "/interrupt", []byte(`{"prompt_id": "`+running+`"}`))
	require.Equal(t, http.StatusOK, code)
	seen := finished(t, tb.ctx, aliceWS, 1)
	require.Contains(t, seen[running], "execution_interrupted")
	for _, sim := range tb.stack.Runtime.Simulators() {
		sim.SetFault(comfysim.Fault{}) // in case it was stopped before the blur
	}
	require.Equal(t, "success", tb.history(t, alice, queued)["status"].(map[string]any)["status_str"])
	st, err := tb.stack.Broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, st.Finished["succeeded"])
	require.Equal(t, 1, st.Finished["interrupted"], "interrupted by Alice, not cancelled by Bob")
	require.Zero(t, st.Finished["cancelled"])

	// Her view has applied everything up to the last job's end, so her
	// history and files, had Bob's requests touched them, would show it.
	code, body = tb.do(t, alice, http.MethodGet, "/history/"+done, nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(body), done)
	code, _ = tb.do(t, alice, http.MethodGet, "/view?filename="+outName+"&subfolder="+outSub+"&type=output", nil)
	require.Equal(t, http.StatusOK, code)
	code, _ = tb.do(t, alice, http.MethodGet, "/view?filename=private.png&subfolder=secret&type=input", nil)
	require.Equal(t, http.StatusOK, code)

	// Bob's socket, with Alice's client id, heard only his own (empty)
	// queue's status.
	ctx, cancel := context.WithTimeout(tb.ctx, 500*time.Millisecond)
	defer cancel()
	var heard []string
	for {
		typ, b, err := bobWS.Read(ctx)
		if err != nil {
			break
		}
		if typ == websocket.MessageBinary {
			heard = append(heard, "binary")
			continue
		}
		heard = append(heard, string(b))
	}
	require.Len(t, heard, 1, "only the connect status: %v", heard)
	require.JSONEq(t, fmt.Sprintf(`{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": %q}}`, sid), heard[0])
}
