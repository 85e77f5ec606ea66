package proxy

import (
	"bytes"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/wire"
)

// fakeBroker answers api.broker.* like the broker's API: it records the
// requests and reports every listed job as affected.
type fakeBroker struct {
	mu   sync.Mutex
	reqs []fakeReq
	got  chan struct{}
}

type fakeReq struct {
	op   string
	body map[string]any
}

func (b *bundle) fakeBroker() *fakeBroker {
	b.t.Helper()
	fb := &fakeBroker{got: make(chan struct{}, 100)}
	sub, err := b.agent.Subscribe(wire.BrokerAPISubject("*"), func(m *nats.Msg) {
		op := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		var body map[string]any
		_ = json.Unmarshal(m.Data, &body)
		fb.mu.Lock()
		fb.reqs = append(fb.reqs, fakeReq{op, body})
		fb.mu.Unlock()
		rep := wire.CancelReply{}
		if ids, ok := body["job_ids"].([]any); ok {
			for _, id := range ids {
				if s, _ := id.(string); !strings.HasPrefix(s, "foreign") {
					rep.Affected = append(rep.Affected, s)
				}
			}
		}
		if id, ok := body["job_id"].(string); ok {
			rep.Affected = append(rep.Affected, id)
		}
		data, _ := json.Marshal(rep)
		_ = m.Respond(data)
		fb.got <- struct{}{}
	})
	require.NoError(b.t, err)
	require.NoError(b.t, b.agent.Flush())
	b.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return fb
}

func (fb *fakeBroker) take(t *testing.T) []fakeReq {
	t.Helper()
	fb.mu.Lock()
	defer fb.mu.Unlock()
	out := fb.reqs
	fb.reqs = nil
	return out
}

func TestQueueInterruptHistoryBrokerAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fb := b.fakeBroker()

	for _, prefix := range []string{"", "/api"} {
		r := b.do(http.MethodPost, "/"+alice+prefix+"/queue", alice, `{"clear": true, "delete": ["a", "b"]}`)
		require.Equal(t, http.StatusOK, r.status, string(r.body))
		require.Empty(t, r.body)
		reqs := fb.take(t)
		require.Len(t, reqs, 2)
		require.Equal(t, wire.OpCancel, reqs[0].op)
		require.Equal(t, true, reqs[0].body["all_pending"])
		require.Equal(t, true, reqs[0].body["pending_only"])
		require.Equal(t, alice, reqs[0].body["user"])
		require.Equal(t, map[string]any{"user": alice, "role": "participant"}, reqs[0].body["caller"])
		require.Equal(t, []any{"a", "b"}, reqs[1].body["job_ids"])
		require.Equal(t, true, reqs[1].body["pending_only"])

		// Interrupt: body optional, prompt_id scopes it.
		r = b.do(http.MethodPost, "/"+alice+prefix+"/interrupt", alice, "")
		require.Equal(t, http.StatusOK, r.status)
		r = b.do(http.MethodPost, "/"+alice+prefix+"/interrupt", alice, `{"prompt_id": "p1"}`)
		require.Equal(t, http.StatusOK, r.status)
		reqs = fb.take(t)
		require.Len(t, reqs, 2)
		require.Equal(t, wire.OpInterrupt, reqs[0].op)
		require.Nil(t, reqs[0].body["job_id"])
		require.Equal(t, "p1", reqs[1].body["job_id"])

		r = b.do(http.MethodPost, "/"+alice+prefix+"/history", alice, `{"clear": true}`)
		require.Equal(t, http.StatusOK, r.status)
		r = b.do(http.MethodPost, "/"+alice+prefix+"/history", alice, `{"delete": ["x"]}`)
		require.Equal(t, http.StatusOK, r.status)
		reqs = fb.take(t)
		require.Len(t, reqs, 2)
		require.Equal(t, wire.OpForget, reqs[0].op)
		require.Equal(t, true, reqs[0].body["all"])
		require.Equal(t, []any{"x"}, reqs[1].body["job_ids"])

		// ComfyUI needs a JSON object body here: 500 otherwise.
		r = b.do(http.MethodPost, "/"+alice+prefix+"/queue", alice, `nope`)
		require.Equal(t, http.StatusInternalServerError, r.status)
	}

	// Jobs cancel: one, many, malformed.
	id := uuid.NewString()
	r := b.do(http.MethodPost, "/"+alice+"/api/jobs/"+id+"/cancel", alice, "")
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, map[string]any{"cancelled": true}, r.json(t))
	r = b.do(http.MethodPost, "/"+alice+"/api/jobs/cancel", alice, `{"job_ids": ["`+id+`"]}`)
	require.Equal(t, map[string]any{"cancelled": true}, r.json(t))
	r = b.do(http.MethodPost, "/"+alice+"/api/api/jobs/cancel", alice, `{"job_ids": ["not-a-uuid"]}`)
	require.Equal(t, http.StatusBadRequest, r.status)
	require.Contains(t, r.json(t), "error")
	reqs := fb.take(t)
	require.Len(t, reqs, 2)
	require.Nil(t, reqs[0].body["pending_only"], "a job cancel also interrupts a running job")

	// Another participant's prefix: refused before the broker is asked.
	r = b.do(http.MethodPost, "/"+bob+"/queue", alice, `{"clear": true}`)
	require.Equal(t, http.StatusForbidden, r.status)
	r = b.do(http.MethodPost, "/"+bob+"/interrupt", teacher, `{}`)
	require.Equal(t, http.StatusForbidden, r.status)
	require.Empty(t, fb.take(t))
}

func TestBrokerAPIUnavailable(t *testing.T) {
	t.Parallel()
	// Nobody serves the broker API: NATS says so at once (no responders).
	b := setup(t)
	r := b.do(http.MethodPost, "/"+alice+"/interrupt", alice, `{}`)
	require.Equal(t, http.StatusServiceUnavailable, r.status)
}

func TestJobsAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	now := time.Now().UTC()
	done := wire.JobRecord{ID: uuid.NewString(), User: alice, State: wire.StateSucceeded, Number: 1,
		Prompt: json.RawMessage(testPrompt), ExtraData: json.RawMessage(`{"extra_pnginfo": {"workflow": {"id": "wf-1"}}}`),
		OutputsToExecute: []string{"9", "10"}, CreatedAt: now.Add(-3 * time.Second),
		StartedAt: now.Add(-2 * time.Second), FinishedAt: now.Add(-time.Second),
		Outputs: map[string]json.RawMessage{"10": json.RawMessage(`{"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}`)}}
	failed := wire.JobRecord{ID: uuid.NewString(), User: alice, State: wire.StateFailed, Number: 2,
		Prompt: json.RawMessage(testPrompt), CreatedAt: now.Add(-2 * time.Second), FinishedAt: now, Reason: "boom"}
	cancelled := wire.JobRecord{ID: uuid.NewString(), User: alice, State: wire.StateCancelled, Number: 3,
		Prompt: json.RawMessage(testPrompt), CreatedAt: now.Add(-time.Second), StartedAt: now.Add(-time.Second / 2), FinishedAt: now}
	// Taken out of the queue before it ran: no trace, as in ComfyUI.
	dequeued := wire.JobRecord{ID: uuid.NewString(), User: alice, State: wire.StateCancelled, Number: 7,
		Prompt: json.RawMessage(testPrompt), CreatedAt: now.Add(-time.Second), FinishedAt: now}
	pending := wire.JobRecord{ID: uuid.NewString(), User: alice, State: wire.StateQueued, Number: 4,
		Prompt: json.RawMessage(testPrompt), CreatedAt: now}
	running := wire.JobRecord{ID: uuid.NewString(), User: alice, State: wire.StateRunning, Number: 5,
		Prompt: json.RawMessage(testPrompt), CreatedAt: now.Add(time.Second), StartedAt: now}
	bobs := wire.JobRecord{ID: uuid.NewString(), User: bob, State: wire.StateSucceeded, Number: 6,
		Prompt: json.RawMessage(testPrompt), CreatedAt: now, FinishedAt: now}
	for _, rec := range []wire.JobRecord{done, failed, cancelled, dequeued, pending, running, bobs} {
		b.putRecord(rec)
	}
	// The first request builds alice's view, which loads every record put
	// so far before it answers.
	list := func(q string) map[string]any {
		t.Helper()
		r := b.do(http.MethodGet, "/"+alice+"/api/jobs"+q, alice, "")
		require.Equal(t, http.StatusOK, r.status, string(r.body))
		return r.json(t)
	}
	all := list("")
	require.Len(t, all["jobs"], 5, "bob's job is not alice's")
	jobs := all["jobs"].([]any)
	require.Equal(t, running.ID, jobs[0].(map[string]any)["id"], "newest first by default")

	hist := list("?status=completed,failed,cancelled&limit=200&offset=0")
	require.Len(t, hist["jobs"], 3)
	byID := map[string]map[string]any{}
	for _, j := range hist["jobs"].([]any) {
		byID[j.(map[string]any)["id"].(string)] = j.(map[string]any)
	}
	require.Equal(t, "completed", byID[done.ID]["status"])
	require.Equal(t, "wf-1", byID[done.ID]["workflow_id"])
	require.EqualValues(t, 1, byID[done.ID]["outputs_count"])
	require.Equal(t, "image", byID[done.ID]["preview_output"].(map[string]any)["mediaType"])
	require.Equal(t, "failed", byID[failed.ID]["status"])
	require.Contains(t, byID[failed.ID], "execution_error")
	require.Equal(t, "cancelled", byID[cancelled.ID]["status"])
	require.Equal(t, map[string]any{"offset": float64(0), "limit": float64(200), "total": float64(3), "has_more": false}, hist["pagination"])

	q := list("?status=in_progress,pending&sort_order=asc")
	require.Len(t, q["jobs"], 2)
	require.Equal(t, "pending", q["jobs"].([]any)[0].(map[string]any)["status"])

	page := list("?limit=2&offset=1")
	require.Len(t, page["jobs"], 2)
	require.Equal(t, true, page["pagination"].(map[string]any)["has_more"])

	for _, bad := range []string{"?status=nope", "?sort_by=x", "?sort_order=up", "?limit=x", "?offset=-1"} {
		r := b.do(http.MethodGet, "/"+alice+"/api/jobs"+bad, alice, "")
		require.Equal(t, http.StatusBadRequest, r.status, bad)
		require.Contains(t, r.json(t), "error", bad)
	}

	r := b.do(http.MethodGet, "/"+alice+"/api/jobs/"+done.ID, alice, "")
	require.Equal(t, http.StatusOK, r.status)
	one := r.json(t)
	require.Contains(t, one, "outputs")
	require.Equal(t, "success", one["execution_status"].(map[string]any)["status_str"])
	require.Contains(t, one["workflow"], "prompt")

	r = b.do(http.MethodGet, "/"+alice+"/api/jobs/"+dequeued.ID, alice, "")
	require.Equal(t, http.StatusNotFound, r.status, "a prompt deleted from the queue")
	require.JSONEq(t, `{}`, string(b.do(http.MethodGet, "/"+alice+"/history/"+dequeued.ID, alice, "").body))

	r = b.do(http.MethodGet, "/"+alice+"/api/jobs/"+bobs.ID, alice, "")
	require.Equal(t, http.StatusNotFound, r.status, "another participant's job")
	require.Equal(t, map[string]any{"error": "Job not found"}, r.json(t))
}

// multipartBody builds an upload form.
func multipartBody(t *testing.T, filename string, content []byte, fields map[string]string) (string, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		require.NoError(t, mw.WriteField(k, v))
	}
	if filename != "" {
		fw, err := mw.CreateFormFile("image", filename)
		require.NoError(t, err)
		_, err = fw.Write(content)
		require.NoError(t, err)
	}
	require.NoError(t, mw.Close())
	return mw.FormDataContentType(), &buf
}

func (b *bundle) upload(user, route, filename string, content []byte, fields map[string]string) response {
	b.t.Helper()
	ct, body := multipartBody(b.t, filename, content, fields)
	return b.do(http.MethodPost, "/"+user+route, user, body.String(), "Content-Type", ct)
}

func pngBytes(t *testing.T, c color.NRGBA) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, 4, 3))
	for y := 0; y < 3; y++ {
		for x := 0; x < 4; x++ {
			img.SetNRGBA(x, y, c)
		}
	}
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	return buf.Bytes()
}

func TestUploads(t *testing.T) {
	t.Parallel()
	b := setup(t)
	red := pngBytes(t, color.NRGBA{255, 0, 0, 255})
	blue := pngBytes(t, color.NRGBA{0, 0, 255, 255})

	r := b.upload(alice, "/upload/image", "photo.png", red, nil)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	require.Equal(t, map[string]any{"name": "photo.png", "subfolder": "", "type": "input"}, r.json(t))
	// Same bytes: reused. Different: renamed. Overwrite: replaced.
	r = b.upload(alice, "/api/upload/image", "photo.png", red, nil)
	require.Equal(t, "photo.png", r.json(t)["name"])
	r = b.upload(alice, "/upload/image", "photo.png", blue, nil)
	require.Equal(t, "photo (1).png", r.json(t)["name"])
	r = b.upload(alice, "/upload/image", "photo.png", blue, map[string]string{"overwrite": "true"})
	require.Equal(t, "photo.png", r.json(t)["name"])
	// A browser path is cut to its base name; subfolder and type are kept.
	r = b.upload(alice, "/upload/image", `C:\Users\me\x.png`, red, map[string]string{"subfolder": "masks", "type": "temp"})
	require.Equal(t, map[string]any{"name": "x.png", "subfolder": "masks", "type": "temp"}, r.json(t))

	// Errors as ComfyUI: no file 400, bad subfolder 400, bad type 500.
	require.Equal(t, http.StatusBadRequest, b.upload(alice, "/upload/image", "", nil, nil).status)
	require.Equal(t, http.StatusBadRequest, b.upload(alice, "/upload/image", "a.png", red, map[string]string{"subfolder": "../bob"}).status)
	require.Equal(t, http.StatusInternalServerError, b.upload(alice, "/upload/image", "a.png", red, map[string]string{"type": "models"}).status)

	// The upload is alice's only.
	r = b.do(http.MethodGet, "/"+alice+"/view?filename=photo.png&type=input", alice, "")
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, blue, r.body)
	r = b.do(http.MethodGet, "/"+bob+"/view?filename=photo.png&type=input", bob, "")
	require.Equal(t, http.StatusNotFound, r.status)

	// Mask: the mask's alpha onto the original.
	mask := pngBytes(t, color.NRGBA{0, 0, 0, 0})
	r = b.upload(alice, "/upload/mask", "clipspace-mask.png", mask, map[string]string{
		"original_ref": `{"filename": "photo.png", "subfolder": "", "type": "input"}`})
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	r = b.do(http.MethodGet, "/"+alice+"/view?filename=clipspace-mask.png&type=input", alice, "")
	img, err := png.Decode(bytes.NewReader(r.body))
	require.NoError(t, err)
	_, _, bl, a := img.At(1, 1).RGBA()
	require.Zero(t, a)
	_ = bl
	// Another participant's original is not found.
	r = b.upload(bob, "/upload/mask", "m.png", mask, map[string]string{
		"original_ref": `{"filename": "photo.png", "subfolder": "", "type": "input"}`})
	require.Equal(t, http.StatusNotFound, r.status)
}

// simCatalog puts the simulator's object_info into carol's pool, so the
// proxy validates exactly what the simulator does.
func (b *bundle) simCatalog() *comfysim.Server {
	b.t.Helper()
	sim, err := comfysim.New(comfysim.Config{Dir: b.t.TempDir(), StepDelay: -1})
	require.NoError(b.t, err)
	b.t.Cleanup(func() { _ = sim.Close() })
	rec := httptest.NewRecorder()
	sim.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/object_info", nil))
	require.Equal(b.t, http.StatusOK, rec.Code)
	cat, err := wire.EncodeCatalog(wire.Catalog{Pool: carolsPool, At: time.Now(), ObjectInfo: rec.Body.Bytes()})
	require.NoError(b.t, err)
	_, err = b.res.Catalog.Put(b.ctx, wire.PoolCatalogKey(carolsPool), cat)
	require.NoError(b.t, err)
	b.awaitCatalog(carolsPool, false)
	return sim
}

func TestValidationLikeComfyUI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sim := b.simCatalog()
	// Carol's pool is the only one: with a second pool, a prompt her pool
	// refuses would go there if that pool can run it.
	require.NoError(t, b.res.Catalog.Delete(b.ctx, wire.PoolCatalogKey(wire.DefaultPool)))
	b.awaitCatalog(wire.DefaultPool, true)
	require.Equal(t, "{}", string(b.do(http.MethodGet, "/user001/object_info", alice, "").body))
	simPost := func(body string) (int, map[string]any) {
		rec := httptest.NewRecorder()
		sim.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/prompt", strings.NewReader(body)))
		var m map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &m)
		return rec.Code, m
	}
	wrap := func(p string) string { return `{"prompt": ` + p + `}` }
	cases := map[string]string{
		"unknown class":    `{"1": {"class_type": "Nope", "inputs": {}}}`,
		"no class":         `{"1": {"inputs": {}}}`,
		"no outputs":       `{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}`,
		"required missing": `{"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}`,
		"bad link":         `{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1"], "filename_prefix": "x"}}}`,
		"out of range":     `{"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 99999, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}`,
		"combo":            `{"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}}, "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}}, "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}`,
		"missing upload":   `{"1": {"class_type": "LoadImage", "inputs": {"image": "bobs.png"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}`,
	}
	for name, p := range cases {
		status, want := simPost(wrap(p))
		r := b.postPrompt(carol, wrap(p))
		require.Equal(t, status, r.status, "%s: %s", name, r.body)
		require.Equal(t, want, r.json(t), name)
	}
	// Coercion is kept in the queued job ("8" → 8), and node_errors are {}.
	r := b.postPrompt(carol, wrap(`{"1": {"class_type": "EmptyImage", "inputs": {"width": "8", "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}`))
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	msg, err := b.res.Submit.GetLastMsgForSubject(b.ctx, wire.SubmitSubject(carol))
	require.NoError(t, err)
	var job wire.Job
	require.NoError(t, json.Unmarshal(msg.Data, &job))
	require.Contains(t, string(job.Prompt), `"width":8`)
}

func TestInputManifest(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.simCatalog()
	red := pngBytes(t, color.NRGBA{255, 0, 0, 255})
	r := b.upload(carol, "/upload/image", "in.png", red, map[string]string{"subfolder": "sub"})
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	r = b.postPrompt(carol, `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "sub/in.png [input]"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}, "number": 5}`)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	require.EqualValues(t, 5, r.json(t)["number"])
	msg, err := b.res.Submit.GetLastMsgForSubject(b.ctx, wire.SubmitSubject(carol))
	require.NoError(t, err)
	var job wire.Job
	require.NoError(t, json.Unmarshal(msg.Data, &job))
	require.Len(t, job.Inputs, 1)
	require.Equal(t, "sub", job.Inputs[0].Subfolder)
	require.Equal(t, "in.png", job.Inputs[0].Name)
	require.EqualValues(t, len(red), job.Inputs[0].Size)
	require.Len(t, job.Inputs[0].SHA256, 64)
	require.NotNil(t, job.Number)
	require.EqualValues(t, 5, *job.Number)

	// The same name in another participant's folder does not count.
	b.storeFile(alice, filestore.KindInput, "", "only-alice.png", red)
	r = b.postPrompt(carol, `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "only-alice.png"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}, "front": true}`)
	require.Equal(t, http.StatusBadRequest, r.status)
	require.Contains(t, string(r.body), "custom_validation_failed")
}

// An upload waits in Config.SpoolDir (a disk of mello, not /tmp) while it
// is hashed, and leaves nothing there.
func TestUploadSpoolDir(t *testing.T) {
	t.Parallel()
	spool := filepath.Join(t.TempDir(), "spool", "uploads")
	b := setup(t, withConfig(func(c *Config) { c.SpoolDir = spool }))
	entries := func() []os.DirEntry {
		e, err := os.ReadDir(spool)
		require.NoError(t, err, "created by New")
		return e
	}
	require.Empty(t, entries())

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	req, err := http.NewRequestWithContext(b.ctx, http.MethodPost, b.url+"/"+alice+"/upload/image", pr)
	require.NoError(t, err)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", basic(alice))
	done := make(chan response, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- response{}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		done <- response{status: resp.StatusCode, body: body}
	}()
	fw, err := mw.CreateFormFile("image", "big.bin")
	require.NoError(t, err)
	_, err = fw.Write(bytes.Repeat([]byte{7}, 1<<20))
	require.NoError(t, err)
	// The spool file is the proxy's state mid-request: no event says
	// it is there.
	testutil.Eventually(t, func() bool { return len(entries()) == 1 }, "the upload in flight is spooled there")
	_, err = fw.Write(bytes.Repeat([]byte{8}, 1<<20))
	require.NoError(t, err)
	require.NoError(t, mw.Close())
	require.NoError(t, pw.Close())
	r := <-done
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	require.Empty(t, entries(), "nothing left behind")
}
