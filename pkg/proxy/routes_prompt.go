package proxy

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/atelier-run/atelier/pkg/wire"
)

// errCodeStoreFailed is JetStream's "store failed" API error (10077); its
// description says which limit refused the message.
const errCodeStoreFailed jetstream.ErrorCode = 10077

// handlePostPrompt accepts a prompt (comfyui-api.md §2.1) and publishes it
// as a job on SUBMIT; the broker takes it from there.
func (p *Proxy) handlePostPrompt(w http.ResponseWriter, r *http.Request) {
	sess := sessionFrom(r.Context())
	body, ok := p.readPromptBody(w, r)
	if !ok {
		return
	}
	ctx, cancel := p.reqCtx(r)
	defer cancel()

	opts := parseOptions{stat: p.storeInputs(ctx, sess.User), newerErrors: p.cfg.NewerErrors}
	req, pool, rerr := p.choosePool(ctx, body, sess, opts)
	if rerr != nil {
		rerr.write(w)
		return
	}
	job := newJob(req, sess.User, pool)
	v, err := p.views.get(ctx, sess.User)
	if err != nil {
		p.unavailable(w, r, err)
		return
	}
	generation, ok := assignJobID(w, v, &job)
	if !ok {
		return
	}
	ack, ok := p.publishJob(ctx, w, r, v, &job, generation)
	if !ok {
		return
	}
	p.log.Info().Str("user", sess.User).Str("job", job.ID).Uint64("number", ack.Sequence).Msg("prompt queued")
	nodeErrors := req.NodeErrors
	if len(nodeErrors) == 0 {
		nodeErrors = json.RawMessage("{}")
	}
	// ComfyUI echoes a client's number as float(number); otherwise its
	// counter, negated for front. Ours is the SUBMIT sequence; /queue and
	// history show the same (comfyNumber).
	number := comfyNumber(&wire.JobRecord{Number: ack.Sequence, ClientNumber: req.Number, Front: req.Front})
	writeJSON(w, http.StatusOK, map[string]any{
		"prompt_id":   job.ID,
		"number":      number,
		"node_errors": nodeErrors,
	})
}

// readPromptBody reads a POST /prompt body up to MaxPromptBytes; false
// when it answered the request with the failure.
func (p *Proxy) readPromptBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, p.cfg.MaxPromptBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writePlain(w, http.StatusRequestEntityTooLarge,
				fmt.Sprintf("prompt too large: the limit is %d bytes", p.cfg.MaxPromptBytes))
			return nil, false
		}
		writePlain(w, http.StatusBadRequest, "read body: "+err.Error())
		return nil, false
	}
	return body, true
}

// newJob is the job a validated prompt becomes on SUBMIT; its ID is the
// client's prompt_id or "" (see assignJobID).
func newJob(req *promptRequest, user, pool string) wire.Job {
	return wire.Job{
		ID:               req.PromptID,
		User:             user,
		Pool:             pool,
		Prompt:           req.Prompt,
		ExtraData:        req.ExtraData,
		ClientID:         req.ClientID,
		OutputsToExecute: req.Outputs,
		Number:           req.Number,
		Front:            req.Front,
		Inputs:           req.Inputs,
		SubmittedAt:      time.Now().UTC(),
	}
}

// assignJobID gives job a new id when the client chose none, and returns
// the generation of the earlier job of a reused id; false when it answered
// the request with the refusal.
//
// A client-chosen prompt_id may name a job of this participant that ran
// before (it runs again, as in ComfyUI) or one still queued or running
// (refused: one job record cannot run twice at once). Other participants'
// ids never collide: jobs are keyed by user.
func assignJobID(w http.ResponseWriter, v *userView, job *wire.Job) (generation uint64, ok bool) {
	if job.ID == "" {
		job.ID = uuid.NewString()
		return 0, true
	}
	rec, known := v.record(job.ID)
	if !known {
		return 0, true
	}
	if rec.State.Pending() {
		writePromptIDInUse(w, job.ID)
		return 0, false
	}
	return rec.SubmitSeq, true
}

// publishJob counts job against the participant's cap on unfinished
// prompts and publishes it on SUBMIT; false when it answered the request
// with the refusal or failure (and took the job off the cap again).
func (p *Proxy) publishJob(ctx context.Context, w http.ResponseWriter, r *http.Request, v *userView, job *wire.Job, generation uint64) (*jetstream.PubAck, bool) {
	// The participant's cap on unfinished prompts (registry quotas).
	maxQueued := p.maxQueuedOf(job.User)
	if !v.reserveSubmit(job.ID, maxQueued) {
		writePromptError(w, http.StatusBadRequest, "queue_full", "Your queue is full",
			fmt.Sprintf("You have %d prompts queued or running, the most you may have at once; wait for one to finish", maxQueued))
		return nil, false
	}
	published := false
	defer func() {
		if !published {
			v.releaseSubmit(job.ID)
		}
	}()
	data, err := json.Marshal(job)
	if err != nil {
		writePlain(w, http.StatusInternalServerError, "encode job: "+err.Error())
		return nil, false
	}
	// The server refuses messages over its max payload; say so like the
	// body limit does rather than as an opaque publish failure.
	if limit := p.cfg.Conn.MaxPayload(); limit > 0 && int64(len(data)) > limit {
		writePlain(w, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("prompt too large: the job is %d bytes, the queue takes at most %d", len(data), limit))
		return nil, false
	}
	ack, err := p.js.Publish(ctx, wire.SubmitSubject(job.User), data,
		jetstream.WithMsgID(wire.SubmitMsgID(job.User, job.ID, generation)), jetstream.WithExpectStream(wire.StreamSubmit))
	if err != nil {
		p.publishError(ctx, w, r, err)
		return nil, false
	}
	if ack.Duplicate {
		// Another submission of this prompt id (a second tab, a client
		// retrying) got there first and is queued: this one will not run.
		p.log.Info().Str("user", job.User).Str("job", job.ID).Msg("prompt_id submitted twice at once")
		writePromptIDInUse(w, job.ID)
		return nil, false
	}
	published = true
	return ack, true
}

// choosePool validates the prompt against the participant's pool and, when
// that pool cannot run it (a node class or model it lacks, or no catalog
// yet), against the other pools in name order: the first pool that can run
// it takes it. When none can, the refusal is ComfyUI's answer for the
// participant's own pool (with its node_errors), else for the first other
// pool; with no catalog anywhere, no GPU side has said what it can run and
// the prompt is refused as such. Nothing is ever queued unchecked.
func (p *Proxy) choosePool(ctx context.Context, body []byte, sess session, opts parseOptions) (*promptRequest, string, *requestError) {
	own, err := p.catalogs.get(ctx, sess.Pool)
	if err != nil {
		p.log.Warn().Err(err).Str("pool", sess.Pool).Msg("pool catalog unavailable")
	}
	var refusal *requestError
	if own != nil {
		req, rerr := parsePromptRequest(body, own, opts)
		if rerr == nil {
			return req, sess.Pool, nil
		}
		refusal = rerr
	}
	for _, other := range p.catalogs.poolsExcept(sess.Pool) {
		oc, _ := p.catalogs.get(ctx, other)
		if oc == nil {
			continue
		}
		req, rerr := parsePromptRequest(body, oc, opts)
		if rerr == nil {
			p.log.Info().Str("user", sess.User).Str("pool", other).Msg("prompt goes to another pool that can run it")
			return req, other, nil
		}
		if refusal == nil {
			refusal = rerr
		}
	}
	if refusal != nil {
		return nil, "", refusal
	}
	// No catalog at all: say what is wrong with the request itself first,
	// then that nothing can check (or run) it yet.
	if _, rerr := parsePromptRequest(body, nil, opts); rerr != nil {
		return nil, "", rerr
	}
	return nil, "", &requestError{Status: http.StatusServiceUnavailable, Type: "no_gpu_available",
		Message: "No GPU is available yet",
		Details: "No GPU agent has reported what it can run, so the prompt cannot be checked or queued; try again in a moment"}
}

// maxQueuedOf is the participant's cap on unfinished prompts from the
// registry (quotas.max_queued), 0 for none. SUBMIT's per-user limit is the
// workshop-wide ceiling above it.
func (p *Proxy) maxQueuedOf(user string) int {
	u, err := p.cfg.Registry.Get(user)
	if err != nil || u.Quotas == nil || u.Quotas.MaxQueued < 0 {
		return 0
	}
	return u.Quotas.MaxQueued
}

// writePromptIDInUse refuses a client prompt_id that names a prompt of the
// participant's that is still queued or running. ComfyUI would queue a
// second copy under the same id; Atelier keeps one record per prompt id,
// so it says no (in the error type newer ComfyUI uses for a bad
// prompt_id, which the frontend shows) instead of answering 200 for a
// prompt it would not run.
func writePromptIDInUse(w http.ResponseWriter, id string) {
	writePromptError(w, http.StatusBadRequest, "invalid_prompt_id", "prompt_id is already queued",
		fmt.Sprintf("The prompt %s is still queued or running; use a new prompt_id, or queue it again once it has finished", id))
}

// publishError answers a refused publish: a full per-user backlog is the
// participant's to see, in ComfyUI's error shape so the frontend shows it.
func (p *Proxy) publishError(ctx context.Context, w http.ResponseWriter, r *http.Request, err error) {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeStoreFailed {
		desc := strings.ToLower(apiErr.Description)
		switch {
		case strings.Contains(desc, "per subject"):
			limit := p.backlogLimit(ctx)
			writePromptError(w, http.StatusBadRequest, "queue_full", "Your queue is full",
				fmt.Sprintf("You have %s unfinished prompts (the limit); wait for some to finish", limit))
			return
		case strings.Contains(desc, "maximum messages") || strings.Contains(desc, "maximum bytes") ||
			strings.Contains(desc, "resource limits"):
			p.log.Error().Err(err).Msg("SUBMIT stream full")
			writePromptError(w, http.StatusServiceUnavailable, "queue_full", "The workshop queue is full",
				"The shared queue holds as many prompts as it can; try again when some have finished")
			return
		}
	}
	p.unavailable(w, r, fmt.Errorf("publish job: %w", err))
}

// backlogLimit is SUBMIT's per-user cap, for the queue_full message.
func (p *Proxy) backlogLimit(ctx context.Context) string {
	s, err := p.js.Stream(ctx, wire.StreamSubmit)
	if err != nil {
		return "the maximum number of"
	}
	return fmt.Sprint(s.CachedInfo().Config.MaxMsgsPerSubject)
}

// handleGetPrompt is GET /prompt: {"exec_info": {"queue_remaining": N}}.
func (p *Proxy) handleGetPrompt(w http.ResponseWriter, r *http.Request) {
	v, err := p.views.get(r.Context(), sessionFrom(r.Context()).User)
	if err != nil {
		p.unavailable(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"exec_info": map[string]any{"queue_remaining": v.queueRemaining()}})
}

// handleQueue is GET /queue: the participant's running and pending jobs as
// ComfyUI queue tuples, ordered by number.
func (p *Proxy) handleQueue(w http.ResponseWriter, r *http.Request) {
	v, err := p.views.get(r.Context(), sessionFrom(r.Context()).User)
	if err != nil {
		p.unavailable(w, r, err)
		return
	}
	recs := v.records(wire.JobState.Pending)
	// ComfyUI's heap order is (number, prompt_id); its array order is an
	// accident that clients sort away, so sorted it is.
	slices.SortFunc(recs, func(a, b wire.JobRecord) int {
		if c := cmp.Compare(priorityOf(&a), priorityOf(&b)); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	running, pending := []any{}, []any{}
	for i := range recs {
		if recs[i].State == wire.StateRunning {
			running = append(running, queueTuple(&recs[i]))
		} else {
			pending = append(pending, queueTuple(&recs[i]))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"queue_running": running, "queue_pending": pending})
}

func compareNumbers(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// comfyNumber is the job's ComfyUI number: the client's number (a float in
// ComfyUI, float(number)) if it sent one, else the queue counter (the
// SUBMIT sequence), negated for front.
func comfyNumber(rec *wire.JobRecord) any {
	switch {
	case rec.ClientNumber != nil:
		return *rec.ClientNumber
	case rec.Front:
		return -int64(rec.Number)
	}
	return rec.Number
}

// priorityOf is comfyNumber as a number to sort by.
func priorityOf(rec *wire.JobRecord) float64 {
	switch {
	case rec.ClientNumber != nil:
		return *rec.ClientNumber
	case rec.Front:
		return -float64(rec.Number)
	}
	return float64(rec.Number)
}

// queueTuple is ComfyUI's [number, prompt_id, prompt, extra_data,
// outputs_to_execute].
func queueTuple(rec *wire.JobRecord) []any {
	prompt := rec.Prompt
	if len(prompt) == 0 {
		prompt = json.RawMessage("{}")
	}
	outputs := rec.OutputsToExecute
	if outputs == nil {
		outputs = []string{}
	}
	return []any{comfyNumber(rec), rec.ID, prompt, publicExtraData(rec.ExtraData), outputs}
}

// publicExtraData is extra_data without the comfy.org credentials, which
// ComfyUI also keeps out of what it returns.
func publicExtraData(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || isNull(raw) {
		return json.RawMessage("{}")
	}
	if !strings.Contains(string(raw), "_comfy_org") {
		return raw
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return json.RawMessage("{}")
	}
	delete(m, "auth_token_comfy_org")
	delete(m, "api_key_comfy_org")
	b, err := json.Marshal(m)
	if err != nil {
		return json.RawMessage("{}")
	}
	return b
}
