package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
)

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := New(Config{})
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.ErrorContains(t, err, "missing Conn")
	require.ErrorContains(t, err, "missing Registry")
	require.ErrorContains(t, err, "missing Store")
}

func TestAuth(t *testing.T) {
	t.Parallel()
	b := setup(t)

	r := b.do(http.MethodGet, "/healthz", "", "")
	require.Equal(t, http.StatusOK, r.status)
	r = b.do(http.MethodGet, "/", "", "")
	require.Equal(t, http.StatusOK, r.status)
	require.Contains(t, string(r.body), "/user001/")

	for _, path := range []string{"/user001/prompt", "/user001/api/prompt", "/user001/ws", "/user001/"} {
		r = b.do(http.MethodGet, path, "", "")
		require.Equal(t, http.StatusUnauthorized, r.status, path)
		require.Equal(t, `Basic realm="Atelier", charset="UTF-8"`, r.header.Get("WWW-Authenticate"))
	}
	r = b.do(http.MethodGet, "/user001/prompt", "", "", "Authorization", "Basic dXNlcjAwMTp3cm9uZw==") // user001:wrong
	require.Equal(t, http.StatusUnauthorized, r.status)
	r = b.do(http.MethodGet, "/user001/prompt", "", "", "Authorization", "Basic bm9ib2R5Onh4") // nobody:xx
	require.Equal(t, http.StatusUnauthorized, r.status)

	// A participant on another participant's prefix.
	r = b.do(http.MethodGet, "/user002/prompt", "", "", "Authorization", basic(alice))
	require.Equal(t, http.StatusForbidden, r.status)
	r = b.do(http.MethodPost, "/user002/api/prompt", "", `{"prompt": {}}`, "Authorization", basic(alice))
	require.Equal(t, http.StatusForbidden, r.status)

	// Own prefix, both forms.
	for _, path := range []string{"/user001/prompt", "/user001/api/prompt"} {
		r = b.do(http.MethodGet, path, alice, "")
		require.Equal(t, http.StatusOK, r.status, path)
		require.JSONEq(t, `{"exec_info": {"queue_remaining": 0}}`, string(r.body))
	}
	// An instructor may look at a participant's space.
	r = b.do(http.MethodGet, "/user001/queue", "", "", "Authorization", basic(teacher))
	require.Equal(t, http.StatusOK, r.status)
	// … but not act in their name.
	r = b.do(http.MethodPost, "/user001/prompt", "", `{"prompt": `+testPrompt+`}`, "Authorization", basic(teacher))
	require.Equal(t, http.StatusForbidden, r.status)
	r = b.do(http.MethodGet, "/nosuchuser/queue", "", "", "Authorization", basic(teacher))
	require.Equal(t, http.StatusNotFound, r.status)

	// Unserved routes under the prefix: 404 without a Fallback.
	r = b.do(http.MethodGet, "/user001/index.html", alice, "")
	require.Equal(t, http.StatusNotFound, r.status)
}

func TestFallback(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *Config) {
		c.Fallback = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "upstream %s for %s", r.URL.Path, sessionFrom(r.Context()).User)
		})
	}))
	r := b.do(http.MethodGet, "/user001/index.html", alice, "")
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "upstream /user001/index.html for user001", string(r.body))
	r = b.do(http.MethodGet, "/user001/index.html", "", "")
	require.Equal(t, http.StatusUnauthorized, r.status)
}

func TestPostPrompt(t *testing.T) {
	t.Parallel()
	b := setup(t)

	r := b.postPrompt(alice, `{"prompt": `+testPrompt+`, "client_id": "abc", "extra_data": {"extra_pnginfo": {"workflow": {"id": "w"}}}}`)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	resp := r.json(t)
	id, _ := resp["prompt_id"].(string)
	require.True(t, canonicalUUID(id), id)
	require.Equal(t, map[string]any{}, resp["node_errors"])

	// The job is on SUBMIT, de-duplicated by user, id and run, numbered
	// by sequence.
	msg, err := b.res.Submit.GetLastMsgForSubject(b.ctx, wire.SubmitSubject(alice))
	require.NoError(t, err)
	require.Equal(t, wire.SubmitMsgID(alice, id, 0), msg.Header.Get(jetstream.MsgIDHeader))
	require.EqualValues(t, msg.Sequence, resp["number"])
	var job wire.Job
	require.NoError(t, json.Unmarshal(msg.Data, &job))
	require.Equal(t, id, job.ID)
	require.Equal(t, alice, job.User)
	require.Equal(t, wire.DefaultPool, job.Pool)
	require.Equal(t, "abc", job.ClientID)
	require.Equal(t, []string{"9", "10"}, job.OutputsToExecute)
	require.JSONEq(t, testPrompt, string(job.Prompt))
	require.JSONEq(t, `{"client_id": "abc", "extra_pnginfo": {"workflow": {"id": "w"}}}`, string(job.ExtraData))
	require.False(t, job.SubmittedAt.IsZero())

	// A client prompt_id is honoured; the /api form works the same.
	own := uuid.NewString()
	r = b.do(http.MethodPost, "/user001/api/prompt", alice, `{"prompt": `+testPrompt+`, "prompt_id": "`+own+`"}`)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	require.Equal(t, own, r.json(t)["prompt_id"])
	require.EqualValues(t, msg.Sequence+1, r.json(t)["number"])

	// partial_execution_targets narrows the outputs.
	r = b.postPrompt(alice, `{"prompt": `+testPrompt+`, "partial_execution_targets": ["10"]}`)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	msg, err = b.res.Submit.GetLastMsgForSubject(b.ctx, wire.SubmitSubject(alice))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(msg.Data, &job))
	require.Equal(t, []string{"10"}, job.OutputsToExecute)
	require.JSONEq(t, `{}`, string(job.ExtraData))
}

// Pool choice at submit: a participant whose pool has no catalog yet (no
// agent of it has reported) gets their prompt run by a pool that can run
// it; a prompt no pool can run is refused with ComfyUI's node_errors; with
// no catalog anywhere nothing is queued unchecked.
func TestPostPromptWithoutCatalog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	lastJob := func(user string) wire.Job {
		t.Helper()
		msg, err := b.res.Submit.GetLastMsgForSubject(b.ctx, wire.SubmitSubject(user))
		require.NoError(t, err)
		var job wire.Job
		require.NoError(t, json.Unmarshal(msg.Data, &job))
		return job
	}
	// carol's pool "bare" has no catalog; the default pool can run it.
	r := b.postPrompt(carol, `{"prompt": `+testPrompt+`}`)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	job := lastJob(carol)
	require.Equal(t, wire.DefaultPool, job.Pool)
	require.Equal(t, []string{"9", "10"}, job.OutputsToExecute)

	// Nobody can run an unknown class: ComfyUI's refusal.
	r = b.postPrompt(carol, `{"prompt": {"1": {"class_type": "Whatever", "inputs": {}},
		"2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}`)
	require.Equal(t, http.StatusBadRequest, r.status, string(r.body))
	require.Equal(t, "invalid_prompt", r.json(t)["error"].(map[string]any)["type"])
	// An input no pool accepts: refused with node_errors.
	r = b.postPrompt(carol, `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": "wide"}},
		"2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}`)
	require.Equal(t, http.StatusBadRequest, r.status, string(r.body))
	require.Equal(t, "prompt_outputs_failed_validation", r.json(t)["error"].(map[string]any)["type"])
	require.Contains(t, r.json(t)["node_errors"], "1")

	// No catalog anywhere (the agents are gone): nothing is queued.
	require.NoError(t, b.res.Catalog.Delete(b.ctx, wire.PoolCatalogKey(wire.DefaultPool)))
	b.awaitCatalog(wire.DefaultPool, true)
	r = b.postPrompt(alice, `{"prompt": `+testPrompt+`}`)
	require.Equal(t, http.StatusServiceUnavailable, r.status, string(r.body))
	require.Equal(t, "no_gpu_available", r.json(t)["error"].(map[string]any)["type"])
	require.Equal(t, map[string]any{}, r.json(t)["node_errors"])
	// A request that is wrong in itself still says so.
	r = b.postPrompt(alice, `{}`)
	require.Equal(t, http.StatusBadRequest, r.status)
	require.Equal(t, "no_prompt", r.json(t)["error"].(map[string]any)["type"])
	info, err := b.res.Submit.Info(b.ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs, "only the prompt the default pool could check")
}

// A participant's cap on unfinished prompts (registry quotas.max_queued)
// is refused at submit in ComfyUI's error shape, counting the prompts
// still on their way to the broker.
func TestMaxQueuedQuota(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.reg.Update(b.ctx, alice, func(u *registry.User) error {
		u.Quotas = &registry.Quotas{MaxQueued: 2}
		return nil
	})
	require.NoError(t, err)
	for range 2 {
		r := b.postPrompt(alice, `{"prompt": `+testPrompt+`}`)
		require.Equal(t, http.StatusOK, r.status, string(r.body))
	}
	r := b.postPrompt(alice, `{"prompt": `+testPrompt+`}`)
	require.Equal(t, http.StatusBadRequest, r.status, string(r.body))
	e := r.json(t)["error"].(map[string]any)
	require.Equal(t, "queue_full", e["type"])
	require.Contains(t, e["details"], "2 prompts")
	require.Equal(t, map[string]any{}, r.json(t)["node_errors"])
	// Bob has no cap of his own.
	for range 3 {
		require.Equal(t, http.StatusOK, b.postPrompt(bob, `{"prompt": `+testPrompt+`}`).status)
	}
}

func TestPostPromptErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *Config) { c.MaxPromptBytes = 4096 }))

	plain := []struct {
		name, body string
		status     int
		contains   string
	}{
		{"invalid JSON", `{"prompt": `, http.StatusInternalServerError, "invalid JSON body"},
		{"body not an object", `null`, http.StatusInternalServerError, "invalid JSON body"},
		{"prompt not an object", `{"prompt": [1, 2]}`, http.StatusInternalServerError, "invalid prompt"},
		{"node not an object", `{"prompt": {"1": 5}}`, http.StatusInternalServerError, "node \"1\" is not an object"},
		{"too deep", `{"prompt": ` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`, http.StatusBadRequest, "nested deeper"},
		{"too large", `{"prompt": {}, "pad": "` + strings.Repeat("x", 5000) + `"}`, http.StatusRequestEntityTooLarge, "too large"},
	}
	for _, tc := range plain {
		r := b.postPrompt(alice, tc.body)
		require.Equal(t, tc.status, r.status, tc.name)
		require.Contains(t, string(r.body), tc.contains, tc.name)
		require.True(t, strings.HasPrefix(r.header.Get("Content-Type"), "text/plain"), tc.name)
	}

	comfy := []struct {
		name, body, typ, message, details string
	}{
		{"no prompt", `{"client_id": "x"}`, "no_prompt", "No prompt provided", "No prompt provided"},
		{"no class_type", `{"prompt": {"1": {"inputs": {}}}}`, "invalid_prompt",
			"Cannot execute because a node is missing the class_type property.", "Node ID '#1'"},
		{"unknown class", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}, "7": {"class_type": "NoSuchNode", "inputs": {}}}}`,
			"invalid_prompt", "Cannot execute because node NoSuchNode does not exist.", "Node ID '#7'"},
		{"no outputs", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}}`, "prompt_no_outputs", "Prompt has no outputs", ""},
		{"no partial outputs", `{"prompt": ` + testPrompt + `, "partial_execution_targets": ["1"]}`, "prompt_no_outputs", "Prompt has no outputs", ""},
		{"bad prompt_id", `{"prompt": ` + testPrompt + `, "prompt_id": "Not-A-UUID"}`, "invalid_prompt_id", "prompt_id must be a valid UUID", ""},
		{"upper-case prompt_id", `{"prompt": ` + testPrompt + `, "prompt_id": "` + strings.ToUpper(uuid.NewString()) + `"}`,
			"invalid_prompt_id", "prompt_id must be a valid UUID", ""},
	}
	for _, tc := range comfy {
		r := b.postPrompt(alice, tc.body)
		require.Equal(t, http.StatusBadRequest, r.status, tc.name)
		var body struct {
			Error struct {
				Type, Message, Details string
				ExtraInfo              map[string]any `json:"extra_info"`
			} `json:"error"`
			NodeErrors map[string]any `json:"node_errors"`
		}
		require.NoError(t, json.Unmarshal(r.body, &body), tc.name)
		require.Equal(t, tc.typ, body.Error.Type, tc.name)
		require.Equal(t, tc.message, body.Error.Message, tc.name)
		if tc.typ != "invalid_prompt_id" {
			require.Equal(t, tc.details, body.Error.Details, tc.name)
		}
		require.NotNil(t, body.Error.ExtraInfo, tc.name)
		require.NotNil(t, body.NodeErrors, tc.name)
	}

	// Nothing of the above reached the queue.
	_, err := b.res.Submit.GetLastMsgForSubject(b.ctx, wire.SubmitSubject(alice))
	require.ErrorIs(t, err, jetstream.ErrMsgNotFound)
}

func TestQueueFull(t *testing.T) {
	t.Parallel()
	b := setup(t, withBacklog(2))
	for range 2 {
		r := b.postPrompt(alice, `{"prompt": `+testPrompt+`}`)
		require.Equal(t, http.StatusOK, r.status, string(r.body))
	}
	r := b.postPrompt(alice, `{"prompt": `+testPrompt+`}`)
	require.Equal(t, http.StatusBadRequest, r.status, string(r.body))
	require.JSONEq(t, `{"error": {"type": "queue_full", "message": "Your queue is full",
		"details": "You have 2 unfinished prompts (the limit); wait for some to finish", "extra_info": {}},
		"node_errors": {}}`, string(r.body))
	// Someone else's queue is not affected.
	r = b.postPrompt(bob, `{"prompt": `+testPrompt+`}`)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
}

// record is a job record of user with the given state and number.
func record(user string, number uint64, state wire.JobState) wire.JobRecord {
	id := uuid.NewString()
	now := time.Now().UTC().Truncate(time.Millisecond)
	rec := wire.JobRecord{
		ID: id, User: user, Pool: wire.DefaultPool, State: state, Number: number, SubmitSeq: number,
		ClientID:         "sid-" + user,
		Prompt:           json.RawMessage(testPrompt),
		ExtraData:        json.RawMessage(`{"client_id": "sid-` + user + `", "auth_token_comfy_org": "secret"}`),
		OutputsToExecute: []string{"9", "10"},
		CreatedAt:        now,
	}
	if state == wire.StateRunning || state.Final() {
		rec.StartedAt = now
		rec.Agent, rec.Slot, rec.Attempt = "agent1", "0", 1
	}
	return rec
}

func TestQueue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	queued := record(alice, 12, wire.StateQueued)
	dispatched := record(alice, 11, wire.StateDispatched)
	running := record(alice, 10, wire.StateRunning)
	done := record(alice, 9, wire.StateSucceeded)
	other := record(bob, 13, wire.StateQueued)
	for _, rec := range []wire.JobRecord{queued, dispatched, running, done, other} {
		b.putRecord(rec)
	}

	r := b.do(http.MethodGet, "/user001/api/queue", alice, "")
	require.Equal(t, http.StatusOK, r.status)
	var q struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	require.NoError(t, json.Unmarshal(r.body, &q))
	require.Len(t, q.Running, 1)
	require.Len(t, q.Pending, 2)
	require.Len(t, q.Running[0], 5)
	require.Equal(t, "10", string(q.Running[0][0]))
	require.Equal(t, `"`+running.ID+`"`, string(q.Running[0][1]))
	require.JSONEq(t, testPrompt, string(q.Running[0][2]))
	// The comfy.org credentials stay out of what is returned.
	require.JSONEq(t, `{"client_id": "sid-user001"}`, string(q.Running[0][3]))
	require.JSONEq(t, `["9", "10"]`, string(q.Running[0][4]))
	require.Equal(t, `"`+dispatched.ID+`"`, string(q.Pending[0][1]))
	require.Equal(t, `"`+queued.ID+`"`, string(q.Pending[1][1]))

	r = b.do(http.MethodGet, "/user001/prompt", alice, "")
	require.JSONEq(t, `{"exec_info": {"queue_remaining": 3}}`, string(r.body))
	r = b.do(http.MethodGet, "/user002/prompt", bob, "")
	require.JSONEq(t, `{"exec_info": {"queue_remaining": 1}}`, string(r.body))
}

func TestHistory(t *testing.T) {
	t.Parallel()
	b := setup(t)
	base := time.Now().UTC().Truncate(time.Millisecond)
	var finished []wire.JobRecord
	states := []wire.JobState{wire.StateSucceeded, wire.StateFailed, wire.StateInterrupted, wire.StateCancelled}
	for i, st := range states {
		rec := record(alice, uint64(20-i), st)
		// Completion order is the reverse of the numbers.
		rec.FinishedAt = base.Add(time.Duration(i) * time.Second)
		if st == wire.StateSucceeded {
			rec.Outputs = map[string]json.RawMessage{"10": json.RawMessage(`{"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"}]}`)}
			rec.Meta = map[string]json.RawMessage{"10": json.RawMessage(`{"node_id": "10", "display_node": "10", "parent_node": null, "real_node_id": "10"}`)}
			rec.Messages = []json.RawMessage{
				json.RawMessage(`["execution_start", {"prompt_id": "` + rec.ID + `", "timestamp": 1}]`),
				json.RawMessage(`["execution_success", {"prompt_id": "` + rec.ID + `", "timestamp": 2}]`),
			}
		}
		if st == wire.StateFailed {
			rec.Reason = "the GPU box went away"
		}
		b.putRecord(rec)
		finished = append(finished, rec)
	}
	running := record(alice, 30, wire.StateRunning)
	b.putRecord(running)
	bobs := record(bob, 31, wire.StateSucceeded)
	bobs.FinishedAt = base
	b.putRecord(bobs)

	// One entry, the §4 shape.
	ok := finished[0]
	r := b.do(http.MethodGet, "/user001/history/"+ok.ID, alice, "")
	require.Equal(t, http.StatusOK, r.status)
	require.JSONEq(t, `{"`+ok.ID+`": {
		"prompt": [20, "`+ok.ID+`", `+testPrompt+`, {"client_id": "sid-user001"}, ["9", "10"]],
		"outputs": {"10": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"}]}},
		"status": {"status_str": "success", "completed": true, "messages": [
			["execution_start", {"prompt_id": "`+ok.ID+`", "timestamp": 1}],
			["execution_success", {"prompt_id": "`+ok.ID+`", "timestamp": 2}]]},
		"meta": {"10": {"node_id": "10", "display_node": "10", "parent_node": null, "real_node_id": "10"}}}}`, string(r.body))

	// A failure without ComfyUI's error gets a synthesized execution_error.
	failed := finished[1]
	r = b.do(http.MethodGet, "/user001/api/history/"+failed.ID, alice, "")
	var h map[string]struct {
		Outputs map[string]any `json:"outputs"`
		Status  struct {
			StatusStr string              `json:"status_str"`
			Completed bool                `json:"completed"`
			Messages  [][]json.RawMessage `json:"messages"`
		} `json:"status"`
		Meta map[string]any `json:"meta"`
	}
	require.NoError(t, json.Unmarshal(r.body, &h))
	e := h[failed.ID]
	require.Equal(t, "error", e.Status.StatusStr)
	require.False(t, e.Status.Completed)
	require.NotNil(t, e.Outputs)
	require.NotNil(t, e.Meta)
	last := e.Status.Messages[len(e.Status.Messages)-1]
	require.Equal(t, `"execution_error"`, string(last[0]))
	require.Contains(t, string(last[1]), "the GPU box went away")

	// Unknown, unfinished and someone else's: {} and 200, never 404.
	for _, id := range []string{uuid.NewString(), running.ID, bobs.ID} {
		r = b.do(http.MethodGet, "/user001/history/"+id, alice, "")
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, "{}", string(r.body))
	}

	// The list: completion order, max_items = the newest, offset from the oldest.
	keys := func(r response) []string {
		t.Helper()
		require.Equal(t, http.StatusOK, r.status, string(r.body))
		dec := json.NewDecoder(strings.NewReader(string(r.body)))
		tok, err := dec.Token()
		require.NoError(t, err)
		require.Equal(t, json.Delim('{'), tok)
		var out []string
		for dec.More() {
			k, err := dec.Token()
			require.NoError(t, err)
			out = append(out, k.(string))
			var skip json.RawMessage
			require.NoError(t, dec.Decode(&skip))
		}
		return out
	}
	ids := func(recs ...wire.JobRecord) []string {
		var out []string
		for _, r := range recs {
			out = append(out, r.ID)
		}
		return out
	}
	require.Equal(t, ids(finished...), keys(b.do(http.MethodGet, "/user001/history", alice, "")))
	require.Equal(t, ids(finished[2:]...), keys(b.do(http.MethodGet, "/user001/api/history?max_items=2", alice, "")))
	require.Equal(t, ids(finished[1:3]...), keys(b.do(http.MethodGet, "/user001/history?max_items=2&offset=1", alice, "")))
	require.Equal(t, ids(finished[3:]...), keys(b.do(http.MethodGet, "/user001/history?offset=3", alice, "")))
	require.Empty(t, keys(b.do(http.MethodGet, "/user001/history?offset=10", alice, "")))
	require.Equal(t, http.StatusInternalServerError, b.do(http.MethodGet, "/user001/history?max_items=x", alice, "").status)
	require.Equal(t, ids(bobs), keys(b.do(http.MethodGet, "/user002/history", bob, "")))
}

func TestView(t *testing.T) {
	t.Parallel()
	b := setup(t)
	content := []byte("0123456789abcdef")
	b.storeFile(alice, filestore.KindOutput, "", "a_00001_.png", content)
	b.storeFile(alice, filestore.KindOutput, "sim", "b_00001_.png", content[:4])
	b.storeFile(alice, filestore.KindInput, "", "in.png", content[:2])
	b.storeFile(bob, filestore.KindOutput, "", "bob.png", content)

	r := b.do(http.MethodGet, "/user001/view?filename=a_00001_.png&type=output&subfolder=&rand=0.5", alice, "")
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	require.Equal(t, content, r.body)
	require.Equal(t, "image/png", r.header.Get("Content-Type"))
	require.Equal(t, `filename="a_00001_.png"`, r.header.Get("Content-Disposition"))
	etag := r.header.Get("ETag")
	require.NotEmpty(t, etag)
	require.Equal(t, "bytes", r.header.Get("Accept-Ranges"))

	r = b.do(http.MethodGet, "/user001/api/view?filename=a_00001_.png", alice, "", "Range", "bytes=2-5")
	require.Equal(t, http.StatusPartialContent, r.status)
	require.Equal(t, "2345", string(r.body))
	require.Equal(t, "bytes 2-5/16", r.header.Get("Content-Range"))

	r = b.do(http.MethodGet, "/user001/view?filename=a_00001_.png", alice, "", "If-None-Match", etag)
	require.Equal(t, http.StatusNotModified, r.status)

	r = b.do(http.MethodGet, "/user001/view?filename=b_00001_.png&subfolder=sim", alice, "")
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "0123", string(r.body))
	// The annotation overrides type.
	r = b.do(http.MethodGet, "/user001/view?filename=in.png%20%5Binput%5D&type=output", alice, "")
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "01", string(r.body))

	for _, tc := range []struct {
		query  string
		status int
	}{
		{"", http.StatusNotFound},
		{"?filename=", http.StatusBadRequest},
		{"?filename=../a_00001_.png", http.StatusBadRequest},
		{"?filename=%2Fetc%2Fpasswd", http.StatusBadRequest},
		{"?filename=a_00001_.png&type=models", http.StatusBadRequest},
		{"?filename=a_00001_.png&subfolder=../../user002/output", http.StatusForbidden},
		{"?filename=a_00001_.png&subfolder=%2Fetc", http.StatusForbidden},
		{"?filename=missing.png", http.StatusNotFound},
		{"?filename=bob.png", http.StatusNotFound}, // bob's file, not alice's
	} {
		r = b.do(http.MethodGet, "/user001/view"+tc.query, alice, "")
		require.Equal(t, tc.status, r.status, tc.query)
	}
	r = b.do(http.MethodGet, "/user002/view?filename=bob.png", bob, "")
	require.Equal(t, http.StatusOK, r.status)
}

func TestInfoRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t)

	r := b.do(http.MethodGet, "/user001/api/object_info", alice, "")
	require.Equal(t, http.StatusOK, r.status)
	require.JSONEq(t, testObjectInfo, string(r.body))
	r = b.do(http.MethodGet, "/user001/object_info/SaveImage", alice, "")
	var oi map[string]map[string]any
	require.NoError(t, json.Unmarshal(r.body, &oi))
	require.Equal(t, true, oi["SaveImage"]["output_node"])
	require.Len(t, oi, 1)
	r = b.do(http.MethodGet, "/user001/object_info/Nope", alice, "")
	require.Equal(t, "{}", string(r.body))

	require.JSONEq(t, `["checkpoints", "loras"]`, string(b.do(http.MethodGet, "/user001/models", alice, "").body))
	require.JSONEq(t, `["a.safetensors", "b.safetensors"]`, string(b.do(http.MethodGet, "/user001/api/models/checkpoints", alice, "").body))
	require.JSONEq(t, `[]`, string(b.do(http.MethodGet, "/user001/models/loras", alice, "").body))
	require.Equal(t, http.StatusNotFound, b.do(http.MethodGet, "/user001/models/nope", alice, "").status)
	require.JSONEq(t, `["easynegative"]`, string(b.do(http.MethodGet, "/user001/embeddings", alice, "").body))
	require.JSONEq(t, `{"system": {"os": "posix", "comfyui_version": "0.3.64"}, "devices": []}`,
		string(b.do(http.MethodGet, "/user001/system_stats", alice, "").body))
	require.JSONEq(t, `{"supports_preview_metadata": true, "max_upload_size": 104857600}`,
		string(b.do(http.MethodGet, "/user001/api/features", alice, "").body))

	// A pool without a catalog gets empty but valid documents.
	require.Equal(t, "{}", string(b.do(http.MethodGet, "/user003/object_info", carol, "").body))
	require.JSONEq(t, `[]`, string(b.do(http.MethodGet, "/user003/models", carol, "").body))
	require.JSONEq(t, `[]`, string(b.do(http.MethodGet, "/user003/embeddings", carol, "").body))
	stats := b.do(http.MethodGet, "/user003/system_stats", carol, "").json(t)
	require.Contains(t, stats, "system")
	require.Contains(t, stats, "devices")

	// A catalog arriving later is picked up.
	cat, err := wire.EncodeCatalog(wire.Catalog{Pool: carolsPool, ObjectInfo: json.RawMessage(testObjectInfo)})
	require.NoError(t, err)
	_, err = b.res.Catalog.Put(context.Background(), wire.PoolCatalogKey(carolsPool), cat)
	require.NoError(t, err)
	b.awaitCatalog(carolsPool, false)
	require.NotNil(t, b.do(http.MethodGet, "/user003/object_info/EmptyImage", carol, "").json(t)["EmptyImage"])
}

// A prompt the participant's pool cannot run goes to a pool whose catalog
// has everything it names; a prompt no pool can run is refused at submit.
func TestPromptGoesToAPoolThatCanRunIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Carol's pool knows only SaveImage: no EmptyImage.
	cat, err := wire.EncodeCatalog(wire.Catalog{Pool: carolsPool, ObjectInfo: json.RawMessage(
		`{"SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}}, "output": [], "output_node": true, "name": "SaveImage"}}`)})
	require.NoError(t, err)
	_, err = b.res.Catalog.Put(b.ctx, wire.PoolCatalogKey(carolsPool), cat)
	require.NoError(t, err)

	b.awaitCatalog(carolsPool, false)
	require.NotNil(t, b.do(http.MethodGet, "/user003/object_info/SaveImage", carol, "").json(t)["SaveImage"])
	r := b.postPrompt(carol, `{"prompt": `+testPrompt+`}`)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	msg, err := b.res.Submit.GetLastMsgForSubject(b.ctx, wire.SubmitSubject(carol))
	require.NoError(t, err)
	var job wire.Job
	require.NoError(t, json.Unmarshal(msg.Data, &job))
	require.Equal(t, wire.DefaultPool, job.Pool, "the default pool can run EmptyImage; carol's cannot")

	r = b.postPrompt(carol, `{"prompt": {"1": {"class_type": "NoPoolHasThis", "inputs": {}}}}`)
	require.Equal(t, http.StatusBadRequest, r.status)
	require.Equal(t, "invalid_prompt", r.json(t)["error"].(map[string]any)["type"])
}

// /view's preview and channel options re-encode like ComfyUI (and the
// simulator, whose code this is).
func TestViewPreviewAndChannel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	img := image.NewNRGBA(image.Rect(0, 0, 4, 3))
	for i := range img.Pix {
		img.Pix[i] = 0x80
	}
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	ref := filestore.Ref{User: alice, Kind: filestore.KindOutput, Name: "p.png"}
	w, err := b.store.Create(b.ctx, ref)
	require.NoError(t, err)
	_, err = w.Write(buf.Bytes())
	require.NoError(t, err)
	_, err = w.Commit(b.ctx, "")
	require.NoError(t, err)

	r := b.do(http.MethodGet, "/user001/view?filename=p.png&preview=jpeg;50", alice, "")
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "image/jpeg", r.header.Get("Content-Type"))
	_, err = jpeg.Decode(bytes.NewReader(r.body))
	require.NoError(t, err)

	r = b.do(http.MethodGet, "/user001/view?filename=p.png&channel=a", alice, "")
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "image/png", r.header.Get("Content-Type"))
	out, err := png.Decode(bytes.NewReader(r.body))
	require.NoError(t, err)
	_, _, _, a := out.At(0, 0).RGBA()
	require.Equal(t, uint32(0x8080), a, "the source's alpha")
}
