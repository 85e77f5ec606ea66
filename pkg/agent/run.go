package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// run is one attempt of one job on one slot.
type run struct {
	s       *slot
	job     wire.Job
	attempt int
	ticket  jetstream.Msg
	log     zerolog.Logger

	// comfyID is this attempt's prompt id inside ComfyUI. A fresh id per
	// attempt keeps a retried job clear of the earlier attempt's history;
	// events and history are translated back to the job id.
	comfyID string
	// sid is this attempt's ComfyUI client id. A fresh one per attempt: a
	// socket reusing an id is unregistered by ComfyUI when the previous
	// socket with that id finishes closing, after which the new socket
	// would silently get no events.
	sid     string
	shipped map[fileKey]outputFile
}

// outcome is how ComfyUI ended the prompt.
type outcome struct {
	kind    wire.ReportKind
	payload json.RawMessage // execution_error / execution_interrupted data
	reason  string
}

func (r *run) execute(ctx context.Context) {
	r.log = r.s.log.With().Str("job", r.job.ID).Str("user", r.job.User).Int("attempt", r.attempt).Logger()
	r.comfyID = uuid.NewString()
	r.sid = strings.ReplaceAll(uuid.NewString(), "-", "")
	r.shipped = map[fileKey]outputFile{}
	r.log.Info().Msg("running job")

	leaseCtx, stopLease := context.WithCancel(ctx)
	defer stopLease()
	go r.keepLease(leaseCtx)

	prompt, err := rewritePrompt(r.job.Prompt, r.job.User, r.s.a.fileInputs())
	if err != nil {
		r.finish(ctx, outcome{kind: wire.ReportFailed, reason: "the prompt cannot run: " + err.Error()}, nil)
		return
	}
	if err := r.stageInputs(ctx); err != nil {
		r.release(ctx, "staging inputs: "+err.Error())
		return
	}

	// Connect before queueing: ComfyUI sends a prompt's events only to a
	// socket that is open when they happen.
	conn, err := r.s.comfy.Dial(ctx, r.sid)
	if err != nil {
		r.release(ctx, "ComfyUI WebSocket: "+err.Error())
		return
	}
	defer conn.Close()

	_, err = r.s.comfy.QueuePrompt(ctx, comfyclient.PromptRequest{
		Prompt:    prompt,
		ClientID:  r.sid,
		PromptID:  r.comfyID,
		ExtraData: r.extraData(),
	})
	var perr *comfyclient.PromptError
	switch {
	case errors.As(err, &perr):
		// ComfyUI refused the prompt (a model missing on this box, say):
		// the participant sees ComfyUI's own explanation.
		r.finish(ctx, outcome{kind: wire.ReportFailed, reason: "ComfyUI refused the prompt: " + string(perr.Body)}, nil)
		return
	case err != nil:
		r.release(ctx, "queue prompt in ComfyUI: "+err.Error())
		return
	}

	out, err := r.follow(ctx, conn)
	if err != nil {
		if ctx.Err() != nil {
			r.abandon()
			return
		}
		r.log.Warn().Err(err).Msg("lost ComfyUI's events; reading the result from history")
		out, err = r.awaitHistory(ctx)
		if err != nil {
			r.release(ctx, "ComfyUI lost: "+err.Error())
			return
		}
	}
	entry, err := r.history(ctx)
	if err != nil {
		r.log.Warn().Err(err).Msg("read history")
	}
	r.finish(ctx, out, entry)
}

// extraData is the job's extra_data with the slot's client id, so ComfyUI
// routes the events to the slot's socket.
func (r *run) extraData() json.RawMessage {
	m := map[string]json.RawMessage{}
	if len(r.job.ExtraData) > 0 {
		_ = json.Unmarshal(r.job.ExtraData, &m)
	}
	m["client_id"], _ = json.Marshal(r.sid)
	data, _ := json.Marshal(m)
	return data
}

// keepLease tells JetStream the job is still being worked on, so the
// ticket is not redelivered while a long job runs.
func (r *run) keepLease(ctx context.Context) {
	every := r.s.ackWait / 3
	if every <= 0 {
		every = 10 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := r.ticket.InProgress(); err != nil {
				r.log.Warn().Err(err).Msg("extend ticket lease")
			}
		}
	}
}

// historyCheckInterval is how long follow waits for a message before it
// asks ComfyUI's history whether the prompt ended without it seeing the
// end (a lost message must not hold a GPU slot forever).
const historyCheckInterval = 10 * time.Second

// follow relays ComfyUI's messages for this prompt until it ends.
func (r *run) follow(ctx context.Context, conn *comfyclient.Conn) (outcome, error) {
	type next struct {
		m   comfyclient.Message
		err error
	}
	msgs := make(chan next)
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	go func() {
		for {
			m, err := conn.Next(readCtx)
			select {
			case msgs <- next{m, err}:
			case <-readCtx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	quiet := time.NewTimer(historyCheckInterval)
	defer quiet.Stop()

	var out *outcome
	for {
		var m comfyclient.Message
		select {
		case <-ctx.Done():
			return outcome{}, ctx.Err()
		case <-quiet.C:
			if _, err := r.history(ctx); err == nil {
				r.log.Warn().Msg("prompt ended without its closing message; taking the result from history")
				return r.outcomeFromHistory(ctx)
			}
			quiet.Reset(historyCheckInterval)
			continue
		case n := <-msgs:
			if n.err != nil {
				if out != nil {
					return *out, nil // the end was seen; only the trailer is lost
				}
				return outcome{}, n.err
			}
			m = n.m
			quiet.Reset(historyCheckInterval)
		}
		if m.Type == "" {
			r.relay("", nil, bytes.ReplaceAll(m.Binary, []byte(r.comfyID), []byte(r.job.ID)))
			continue
		}
		var head struct {
			PromptID string          `json:"prompt_id"`
			Node     json.RawMessage `json:"node"`
		}
		_ = json.Unmarshal(m.Data, &head)
		if head.PromptID != "" && head.PromptID != r.comfyID {
			continue
		}
		data := r.translate(m.Data)
		switch m.Type {
		case "status", "feature_flags", "logs":
		case "executing":
			if head.PromptID == r.comfyID && (len(head.Node) == 0 || string(head.Node) == "null") {
				if out == nil {
					out = &outcome{kind: wire.ReportSucceeded}
				}
				return *out, nil
			}
			r.relay(m.Type, data, nil)
		case "executed":
			var err error
			data, err = r.handleExecuted(ctx, data)
			if err != nil {
				return outcome{}, err
			}
			r.relay(m.Type, data, nil)
		case "execution_success":
			out = &outcome{kind: wire.ReportSucceeded}
		case "execution_error":
			var e struct {
				ExceptionType string `json:"exception_type"`
			}
			_ = json.Unmarshal(data, &e)
			if e.ExceptionType == "ExecutionBlocked" {
				r.relay(m.Type, data, nil) // informational; the prompt goes on
				continue
			}
			out = &outcome{kind: wire.ReportFailed, payload: data}
		case "execution_interrupted":
			out = &outcome{kind: wire.ReportInterrupted, payload: data}
		default:
			r.relay(m.Type, data, nil)
		}
	}
}

// translate replaces ComfyUI's prompt id with the job id. Both are UUIDs of
// the same length, so this is safe inside binary frames too.
func (r *run) translate(b []byte) json.RawMessage {
	return bytes.ReplaceAll(b, []byte(r.comfyID), []byte(r.job.ID))
}

// handleExecuted ships the files of a finished output node to mello,
// records the output, and returns the message with the participant's names.
func (r *run) handleExecuted(ctx context.Context, data json.RawMessage) (json.RawMessage, error) {
	var msg map[string]json.RawMessage
	if err := json.Unmarshal(data, &msg); err != nil {
		return data, nil
	}
	var node string
	_ = json.Unmarshal(msg["node"], &node)
	output, err := r.shipOutput(ctx, msg["output"])
	if err != nil {
		return nil, fmt.Errorf("ship outputs of node %s: %w", node, err)
	}
	msg["output"] = output
	r.report(ctx, wire.Report{Kind: wire.ReportOutput, Node: node, Output: output})
	return json.Marshal(msg)
}

// relay publishes a live event for the participant's UI. Lossy by design.
func (r *run) relay(typ string, data json.RawMessage, binary []byte) {
	ev, _ := json.Marshal(wire.Event{
		JobID: r.job.ID, ClientID: r.job.ClientID, Attempt: r.attempt,
		Type: typ, Data: data, Binary: binary,
	})
	if err := r.s.a.nc.Publish(wire.EventSubject(r.s.a.cfg.ID, r.job.User, r.job.ID), ev); err != nil {
		r.log.Debug().Err(err).Msg("relay event")
	}
}

// errNotInHistory: ComfyUI has no history entry for the prompt (yet).
var errNotInHistory = errors.New("prompt not in ComfyUI's history")

// historyEntry is the part of ComfyUI's history entry the report carries.
type historyEntry struct {
	Outputs map[string]json.RawMessage `json:"outputs"`
	Meta    map[string]json.RawMessage `json:"meta"`
	Status  struct {
		StatusStr string            `json:"status_str"`
		Messages  []json.RawMessage `json:"messages"`
	} `json:"status"`
}

func (r *run) history(ctx context.Context) (*historyEntry, error) {
	raw, found, err := r.s.comfy.History(ctx, r.comfyID)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, errNotInHistory
	}
	var h historyEntry
	if err := json.Unmarshal(r.translate(raw), &h); err != nil {
		return nil, fmt.Errorf("decode history entry: %w", err)
	}
	return &h, nil
}

// awaitHistory polls ComfyUI's history when the WebSocket is gone.
func (r *run) awaitHistory(ctx context.Context) (outcome, error) {
	deadline := time.Now().Add(10 * time.Minute)
	fails := 0
	for time.Now().Before(deadline) {
		_, err := r.history(ctx)
		switch {
		case err == nil:
			return r.outcomeFromHistory(ctx)
		case ctx.Err() != nil:
			return outcome{}, ctx.Err()
		case !errors.Is(err, errNotInHistory):
			if fails++; fails > 20 {
				return outcome{}, err
			}
		}
		if !sleep(ctx, 500*time.Millisecond) {
			return outcome{}, ctx.Err()
		}
	}
	return outcome{}, errors.New("prompt did not finish")
}

// outcomeFromHistory reads how the prompt ended from its history entry.
func (r *run) outcomeFromHistory(ctx context.Context) (outcome, error) {
	h, err := r.history(ctx)
	if err != nil {
		return outcome{}, err
	}
	for _, m := range h.Status.Messages {
		var pair []json.RawMessage
		if json.Unmarshal(m, &pair) != nil || len(pair) != 2 {
			continue
		}
		var ev string
		_ = json.Unmarshal(pair[0], &ev)
		switch ev {
		case "execution_error":
			return outcome{kind: wire.ReportFailed, payload: pair[1]}, nil
		case "execution_interrupted":
			return outcome{kind: wire.ReportInterrupted, payload: pair[1]}, nil
		}
	}
	return outcome{kind: wire.ReportSucceeded}, nil
}

// finish ships whatever the history names that was not shipped yet,
// reports the final state and acknowledges the ticket.
func (r *run) finish(ctx context.Context, out outcome, h *historyEntry) {
	rep := wire.Report{Kind: out.kind, Error: out.payload, Reason: out.reason}
	if h != nil {
		rep.Outputs = map[string]json.RawMessage{}
		for node, o := range h.Outputs {
			shipped, err := r.shipOutput(ctx, o)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				r.release(ctx, "ship outputs: "+err.Error())
				return
			}
			rep.Outputs[node] = shipped
		}
		rep.Meta = h.Meta
		rep.Messages = h.Status.Messages
	}
	if out.kind == wire.ReportFailed && rep.Reason == "" {
		var e struct {
			Message string `json:"exception_message"`
			Type    string `json:"exception_type"`
		}
		_ = json.Unmarshal(out.payload, &e)
		rep.Reason = fmt.Sprintf("%s: %s", e.Type, e.Message)
	}
	if !r.report(ctx, rep) {
		return // not recorded: the ticket comes back and the job runs again
	}
	ackCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r.ticket.DoubleAck(ackCtx); err != nil {
		r.log.Warn().Err(err).Msg("ack ticket")
	}
	r.log.Info().Str("result", string(out.kind)).Msg("job done")
}

// abandon gives the job back when the agent stops mid-run: ComfyUI stops
// the prompt and the ticket is redelivered at once rather than after
// AckWait.
func (r *run) abandon() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.s.comfy.Interrupt(ctx, r.comfyID); err != nil {
		r.log.Debug().Err(err).Msg("interrupt on stop")
	}
	r.release(ctx, "the agent stopped")
}

// release gives the job back for another attempt.
func (r *run) release(ctx context.Context, reason string) {
	r.log.Warn().Str("reason", reason).Msg("releasing job for another attempt")
	r.report(ctx, wire.Report{Kind: wire.ReportReleased, Reason: reason})
	_ = r.ticket.NakWithDelay(r.s.a.cfg.RetryDelay)
}

// report publishes a durable report, retrying until JetStream stores it or
// ctx ends. It reports whether the report was stored.
func (r *run) report(ctx context.Context, rep wire.Report) bool {
	rep.JobID, rep.User, rep.Agent, rep.Slot, rep.Attempt = r.job.ID, r.job.User, r.s.a.cfg.ID, r.s.ep.Slot, r.attempt
	rep.At = time.Now().UTC()
	data, err := json.Marshal(rep)
	if err != nil {
		r.log.Error().Err(err).Msg("encode report")
		return false
	}
	subj := wire.ReportSubject(r.s.a.cfg.ID, r.job.ID)
	for try := 0; ; try++ {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := r.s.a.js.Publish(pctx, subj, data, jetstream.WithMsgID(rep.MsgID()))
		cancel()
		if err == nil {
			return true
		}
		r.log.Warn().Err(err).Str("kind", string(rep.Kind)).Int("try", try).Msg("publish report")
		if !sleep(ctx, time.Duration(min(try+1, 10))*200*time.Millisecond) {
			return false
		}
	}
}
