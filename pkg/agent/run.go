package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/comfyapi"
	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// run is one attempt of one job on one slot.
type run struct {
	s         *slot
	job       wire.Job
	attempt   int
	ticket    jetstream.Msg
	delivered uint64 // the ticket's NumDelivered
	// prefetched: claimed while the slot was busy; the broker records
	// the job running only once the agent reports it started.
	prefetched bool
	log        zerolog.Logger

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
	// ownPrompt is the job's prompt as ComfyUI writes it into a PNG, for
	// the participant's copies of their PNGs (pngmeta.go).
	ownPromptOnce sync.Once
	ownPrompt     []byte
	ownPromptErr  error

	// Prepared ahead of the start: the rewritten prompt (or why it
	// cannot run), and the WebSocket, dialled on ComfyUI generation gen.
	prompt    json.RawMessage
	promptErr error
	conn      *comfyclient.Conn
	gen       uint64

	stopLease context.CancelFunc
	// cancel ends the attempt early with a cause (errDrainDeadline).
	cancel context.CancelCauseFunc
	// gpuFree is closed when ComfyUI no longer works on this prompt.
	gpuFree  chan struct{}
	freeOnce sync.Once
	// onEnd runs once when the run is over (the agent stops holding the job).
	onEnd   func()
	endOnce sync.Once

	// submitted is closed once this attempt's prompt went to ComfyUI (or
	// will not): a prefetched successor is queued in ComfyUI only after
	// it, so ComfyUI runs them in order.
	submitted     chan struct{}
	submittedOnce sync.Once
	// interruptReq is closed when an interrupt reaches a started run: its
	// follower then takes the prompt out of ComfyUI (withdraw.go).
	interruptReq  chan struct{}
	interruptOnce sync.Once

	mu          sync.Mutex
	phase       runPhase
	interrupted bool // an interrupt was requested (ctl)
	// preparing: the slot that claimed the run is staging it; an
	// interrupt meanwhile cancels the staging (cancelPrep) and leaves
	// the rest to that slot (dropInterrupted).
	preparing  bool
	cancelPrep context.CancelFunc
	// holds release the run's inputs in the box's cache (at end).
	holds []func()
	// localOutputs are the files shipped from ComfyUI's own folders,
	// emptied once the run is over (unless Config.KeepOutputs).
	localOutputs []localFile
	startedSent  bool
	// Queued ahead: a prefetched prompt goes into ComfyUI's own queue
	// while the slot's current one runs, so ComfyUI starts it the instant
	// the current one ends. aheadDone is closed when that POST is over;
	// queuedAhead says it went in, on ComfyUI generation aheadGen.
	aheadDone   chan struct{}
	queuedAhead bool
	aheadGen    uint64
}

type runPhase int

const (
	phasePending runPhase = iota // claimed and staged, not in ComfyUI yet
	phaseStarted                 // queued in ComfyUI
	phaseDropped                 // given up before it started
)

// outcome is how ComfyUI ended the prompt.
type outcome struct {
	kind    wire.ReportKind
	payload json.RawMessage // execution_error / execution_interrupted data
	reason  string
	// notRun: ComfyUI never ran the prompt (withdrawn from its queue), so
	// it has no history entry to read.
	notRun bool
}

var (
	// errStalled: the event watchdog fired.
	errStalled = errors.New("no event from ComfyUI")
	// errComfyExited: the runtime saw ComfyUI exit.
	errComfyExited = errors.New("ComfyUI exited")
	// errDrainDeadline: the drain deadline passed with the job running.
	errDrainDeadline = errors.New("the agent is draining and the deadline passed")
)

func newRun(ctx context.Context, s *slot, job wire.Job, attempt int, ticket jetstream.Msg, delivered uint64, prefetched bool) *run {
	r := &run{
		s: s, job: job, attempt: attempt, ticket: ticket, delivered: delivered, prefetched: prefetched,
		comfyID:      uuid.NewString(),
		sid:          strings.ReplaceAll(uuid.NewString(), "-", ""),
		shipped:      map[fileKey]outputFile{},
		gpuFree:      make(chan struct{}),
		submitted:    make(chan struct{}),
		interruptReq: make(chan struct{}),
	}
	r.log = s.log.With().Str("job", job.ID).Str("user", job.User).Int("attempt", attempt).Logger()
	// The lease runs from the claim: a prefetched ticket waiting for the
	// GPU must not be redelivered either.
	leaseCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	r.stopLease = stop
	go r.keepLease(leaseCtx)
	return r
}

// prepare does what can happen before the GPU is free: rewrite the
// prompt, stage the inputs, open the WebSocket.
func (r *run) prepare(ctx context.Context) error {
	r.prompt, r.promptErr = rewritePrompt(r.job.Prompt, r.job.User, r.s.a.promptRules())
	if r.promptErr != nil {
		return nil // reported as a failure when the job starts
	}
	if err := r.stageInputs(ctx); err != nil {
		return fmt.Errorf("staging inputs: %w", err)
	}
	r.gen = r.s.healthy.Load()
	// Connect before queueing: ComfyUI sends a prompt's events only to a
	// socket that is open when they happen.
	conn, err := r.s.comfy.Dial(ctx, r.sid)
	if err != nil {
		return fmt.Errorf("ComfyUI WebSocket: %w", err)
	}
	// Previews with metadata (binary event 4) carry the node they belong
	// to; the proxy turns them back into plain previews for participants
	// whose frontend does not understand them.
	if err := conn.SendFeatureFlags(ctx, map[string]any{"supports_preview_metadata": true}); err != nil {
		conn.Close()
		return fmt.Errorf("ComfyUI WebSocket: %w", err)
	}
	r.conn = conn
	return nil
}

// end releases what the run holds.
func (r *run) end() {
	r.endOnce.Do(func() {
		if r.onEnd != nil {
			r.onEnd()
		}
		r.signal(stepEnded)
	})
	r.stopLease()
	r.freeGPU()
	r.markSubmitted()
	if r.conn != nil {
		r.conn.Close()
	}
	r.mu.Lock()
	holds, outputs := r.holds, r.localOutputs
	r.holds, r.localOutputs = nil, nil
	r.mu.Unlock()
	for _, release := range holds {
		release()
	}
	if !r.s.a.cfg.KeepOutputs {
		for _, f := range outputs {
			if err := r.s.a.emptyShipped(f); err != nil {
				r.s.cannotEmpty(f, err)
			}
		}
	}
}

func (r *run) freeGPU() { r.freeOnce.Do(func() { close(r.gpuFree) }) }

func (r *run) markSubmitted() { r.submittedOnce.Do(func() { close(r.submitted) }) }

// queueAhead puts a prefetched run's prompt into ComfyUI's queue behind
// the prompt of cur (the slot's running job; nil when none), so that
// ComfyUI starts it the moment cur ends, with no round trip through the
// agent in between. It runs in the background; execute waits for it and
// then only follows the prompt. A run dropped or interrupted before it
// started takes its prompt out of ComfyUI's queue again (cancelAhead).
func (r *run) queueAhead(ctx context.Context, cur *run) {
	if cur != nil {
		select {
		case <-cur.submitted:
		case <-ctx.Done():
			return
		}
	}
	r.mu.Lock()
	// Once the phase check passed, execute waits for aheadDone before it
	// touches the run's prompt, connection or id.
	if r.phase != phasePending || r.aheadDone != nil || r.promptErr != nil || r.conn == nil {
		r.mu.Unlock()
		return
	}
	done := make(chan struct{})
	r.aheadDone = done
	gen := r.gen
	r.mu.Unlock()
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := r.s.comfy.QueuePrompt(qctx, comfyclient.PromptRequest{
		Prompt: r.prompt, ClientID: r.sid, PromptID: r.comfyID, ExtraData: r.extraData(),
		PartialExecutionTargets: r.job.OutputsToExecute,
	})
	cancel()
	r.mu.Lock()
	r.queuedAhead = err == nil
	r.aheadGen = gen
	dropped := r.phase == phaseDropped
	r.mu.Unlock()
	close(done)
	if err != nil {
		// execute queues it the usual way and handles the error there.
		r.log.Debug().Err(err).Msg("queue ahead in ComfyUI")
		return
	}
	r.log.Debug().Msg("queued ahead in ComfyUI")
	if dropped {
		r.cancelAhead()
	}
}

// awaitAhead waits for a queueAhead under way and reports whether the
// prompt is in ComfyUI's queue (on generation gen).
func (r *run) awaitAhead() (queued bool, gen uint64) {
	r.mu.Lock()
	done := r.aheadDone
	r.mu.Unlock()
	if done == nil {
		return false, 0
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.queuedAhead, r.aheadGen
}

// cancelAhead takes a prompt queued ahead out of ComfyUI: deleted from the
// queue if it is still pending, interrupted if ComfyUI started it
// meanwhile (an interrupt names the prompt, so it touches nothing else),
// again until ComfyUI holds it no more (withdrawUnfollowed).
func (r *run) cancelAhead() {
	if queued, _ := r.awaitAhead(); !queued {
		return
	}
	r.withdrawUnfollowed(r.comfyPromptID())
}

// begin moves a pending run to started; false if it was dropped.
func (r *run) begin() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.phase == phaseDropped {
		return false
	}
	r.phase = phaseStarted
	return true
}

// dropBeforeStart gives a prefetched job back without running it.
func (r *run) dropBeforeStart(ctx context.Context, reason string, delay bool) bool {
	r.mu.Lock()
	if r.phase != phasePending {
		r.mu.Unlock()
		return false
	}
	r.phase = phaseDropped
	r.mu.Unlock()
	defer r.end()
	r.cancelAhead()
	r.log.Info().Str("reason", reason).Msg("giving a prefetched job back")
	r.report(ctx, wire.Report{Kind: wire.ReportReleased, Reason: reason})
	if delay {
		_ = r.ticket.NakWithDelay(r.s.a.cfg.RetryDelay)
	} else {
		_ = r.ticket.Nak()
	}
	r.signal(stepReleased)
	return true
}

// interrupt handles a ctl interrupt: a started prompt is taken out of
// ComfyUI, deleted from its queue or interrupted (the run then ends as
// interrupted, also when ComfyUI never ran it); one not started yet is
// dropped, reported interrupted, and never runs.
func (r *run) interrupt(ctx context.Context) {
	r.mu.Lock()
	r.interrupted = true
	phase, comfyID, preparing, cancelPrep := r.phase, r.comfyID, r.preparing, r.cancelPrep
	if phase == phasePending {
		r.phase = phaseDropped
	}
	r.mu.Unlock()
	switch phase {
	case phasePending:
		if preparing {
			// The claiming slot is staging it: it sees the drop when
			// staging returns (at once: it is cancelled) and reports.
			cancelPrep()
			return
		}
		r.dropInterrupted(ctx)
	case phaseStarted:
		// The follower keeps at it until ComfyUI has let go of the
		// prompt, and ends the run; a first round now, where the prompt
		// is in ComfyUI already, makes the common case immediate.
		r.interruptOnce.Do(func() { close(r.interruptReq) })
		if isClosed(r.submitted) {
			r.stopInComfy(ctx, comfyID)
		}
	}
}

// dropInterrupted ends a run interrupted before it started: out of
// ComfyUI's queue if it was queued ahead, reported interrupted, ticket
// back. Called once, by whoever saw the drop last (interrupt, or the slot
// that was staging the run).
func (r *run) dropInterrupted(ctx context.Context) {
	defer r.end()
	r.cancelAhead()
	r.log.Info().Msg("interrupted before it started: dropped")
	stored := r.report(ctx, wire.Report{Kind: wire.ReportInterrupted, Reason: "interrupted before it started"})
	// The ticket comes back once the broker recorded the end, and its
	// claim is then answered skip.
	_ = r.ticket.NakWithDelay(r.s.a.cfg.RetryDelay)
	if stored {
		r.signalReported(wire.ReportInterrupted)
	}
}

// execute runs the prompt in ComfyUI, follows it to its end, and reports
// how it ended (or gives the job back).
func (r *run) execute(parent context.Context) {
	defer r.end()
	if !r.begin() {
		return
	}
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	r.mu.Lock()
	r.cancel = cancel
	r.mu.Unlock()
	r.log.Info().Bool("prefetched", r.prefetched).Msg("running job")

	if r.promptErr != nil {
		r.finish(ctx, outcome{kind: wire.ReportFailed, reason: "the prompt cannot run: " + r.promptErr.Error()}, nil)
		return
	}
	exited, ok := r.submit(ctx)
	if !ok {
		return
	}
	r.signal(stepStarted)

	// An interrupt that came before (or while) the prompt went in is
	// seen by follow at once, through interruptReq.
	out, err := r.follow(ctx, r.conn, exited)
	if err != nil {
		if out, ok = r.afterLostFollow(ctx, err, exited); !ok {
			return
		}
	}
	r.conclude(ctx, out)
}

// submit puts the prompt into ComfyUI, unless it is there already
// (queued ahead on the same ComfyUI), and returns the channel closed when
// that ComfyUI exits. Not ok: the prompt is not in ComfyUI, and the job
// was failed or given back.
func (r *run) submit(ctx context.Context) (exited <-chan struct{}, ok bool) {
	ahead, ok := r.readyForComfy(ctx)
	if !ok {
		return nil, false
	}
	exited = r.s.exited()
	var err error
	if !ahead {
		_, err = r.s.comfy.QueuePrompt(ctx, comfyclient.PromptRequest{
			Prompt:    r.prompt,
			ClientID:  r.sid,
			PromptID:  r.comfyID,
			ExtraData: r.extraData(),
			// The outputs the proxy validated (all of them, or the
			// participant's "queue selected outputs"): ComfyUI runs
			// only these and what they depend on.
			PartialExecutionTargets: r.job.OutputsToExecute,
		})
	}
	r.markSubmitted()
	var perr *comfyclient.PromptError
	switch {
	case errors.As(err, &perr):
		// ComfyUI refused the prompt (a model missing on this box, say):
		// the participant sees ComfyUI's own explanation.
		r.finish(ctx, outcome{kind: wire.ReportFailed, reason: "ComfyUI refused the prompt: " + string(perr.Body)}, nil)
		return nil, false
	case err != nil:
		r.s.markDown()
		r.retryOrFail(ctx, "queue prompt in ComfyUI: "+err.Error(), nil, true)
		return nil, false
	}
	if r.prefetched {
		r.reportStarted(ctx)
	}
	return exited, true
}

// readyForComfy makes sure the run's prompt and WebSocket belong to the
// slot's current ComfyUI: ahead when the prompt was queued ahead there
// already. Not ok: staging again failed, and the job was given back.
func (r *run) readyForComfy(ctx context.Context) (ahead, ok bool) {
	queued, gen := r.awaitAhead()
	ahead = queued && r.conn != nil && gen == r.gen && gen == r.s.healthy.Load()
	if queued && !ahead {
		// ComfyUI restarted (or was taken for down) since the prompt was
		// queued ahead: make sure it is gone, and queue it afresh under
		// a new id.
		r.cancelAhead()
		r.mu.Lock()
		r.comfyID = uuid.NewString()
		r.mu.Unlock()
	}
	if r.conn == nil || r.gen != r.s.healthy.Load() {
		// ComfyUI restarted since the job was staged.
		if r.conn != nil {
			r.conn.Close()
			r.conn = nil
		}
		if err := r.prepare(ctx); err != nil {
			r.s.markDown()
			r.retryOrFail(ctx, err.Error(), nil, true)
			return false, false
		}
	}
	return ahead, true
}

// afterLostFollow handles follow's error: the job is given back or failed
// (not ok), or, when only ComfyUI's events were lost, the outcome is read
// from ComfyUI's history.
func (r *run) afterLostFollow(ctx context.Context, err error, exited <-chan struct{}) (outcome, bool) {
	switch {
	case errors.Is(context.Cause(ctx), errDrainDeadline):
		r.abandon(errDrainDeadline.Error(), false)
	case ctx.Err() != nil:
		r.abandon("the agent stopped", true)
	case errors.Is(err, errStalled):
		r.abandonComfy(ctx, fmt.Sprintf("no event from ComfyUI for %s", r.s.a.cfg.EventTimeout))
	case errors.Is(err, errComfyExited):
		r.s.markDown()
		r.freeGPU()
		r.retryOrFail(ctx, "ComfyUI exited while running the job", nil, true)
	case errors.Is(err, filestore.ErrQuotaExceeded), errors.Is(err, ErrForeignOutput):
		// Retrying cannot help: the participant must make room first, or
		// the workflow writes where it must not.
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_ = r.s.comfy.Interrupt(ictx, r.comfyID)
		cancel()
		r.finish(ctx, outcome{kind: wire.ReportFailed, reason: refusedReason(err)}, nil)
	default:
		r.log.Warn().Err(err).Msg("lost ComfyUI's events; reading the result from history")
		out, err := r.awaitHistory(ctx, exited)
		if err != nil {
			r.s.markDown()
			r.freeGPU()
			r.retryOrFail(ctx, "ComfyUI lost: "+err.Error(), nil, true)
			return outcome{}, false
		}
		return out, true
	}
	return outcome{}, false
}

// conclude reports how ComfyUI ended the prompt, or gives the job back
// when ComfyUI ran out of memory.
func (r *run) conclude(ctx context.Context, out outcome) {
	if out.kind == wire.ReportFailed && isOOM(out.payload) {
		// Out of memory is often the ComfyUI process's fragmented or
		// leaked memory, not the job: restart it and try again; a job
		// that does not fit anywhere fails after MaxDeliver attempts.
		r.s.restart(ctx, "out of memory")
		r.freeGPU()
		r.retryOrFail(ctx, "ComfyUI ran out of GPU memory", out.payload, true)
		return
	}
	if out.notRun {
		r.log.Info().Msg("interrupted before ComfyUI ran it: taken out of its queue")
		r.freeGPU()
		r.finish(ctx, out, nil)
		return
	}
	entry, err := r.history(ctx)
	if err != nil {
		r.log.Warn().Err(err).Msg("read history")
	}
	r.finish(ctx, out, entry)
}

// abandonComfy handles a hung ComfyUI: interrupt the prompt, restart
// ComfyUI, retry the job elsewhere.
func (r *run) abandonComfy(ctx context.Context, reason string) {
	r.log.Warn().Str("reason", reason).Msg("watchdog: ComfyUI is stuck")
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_ = r.s.comfy.Interrupt(ictx, r.comfyID)
	cancel()
	// Give the job back first, so another slot can start it while this
	// ComfyUI restarts.
	r.retryOrFail(ctx, reason, nil, true)
	r.s.restart(ctx, reason)
	r.freeGPU()
}

// isOOM reports whether an execution_error is ComfyUI running out of GPU
// memory.
func isOOM(payload json.RawMessage) bool {
	var e struct {
		Type    string `json:"exception_type"`
		Message string `json:"exception_message"`
	}
	_ = json.Unmarshal(payload, &e)
	return strings.Contains(e.Type, "OutOfMemory") || strings.Contains(strings.ToLower(e.Message), "out of memory")
}

// reportStarted tells the broker a prefetched job is now in ComfyUI.
func (r *run) reportStarted(ctx context.Context) {
	r.mu.Lock()
	sent := r.startedSent
	r.startedSent = true
	r.mu.Unlock()
	if !sent {
		r.report(ctx, wire.Report{Kind: wire.ReportStarted})
	}
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
// ticket is not redelivered while a long job runs (or waits, prefetched).
func (r *run) keepLease(ctx context.Context) { keepLease(ctx, r.ticket, r.s.ackWait, r.log) }

// keepLease extends the ticket's lease every third of the consumer's
// AckWait until ctx ends.
func keepLease(ctx context.Context, ticket jetstream.Msg, ackWait time.Duration, log zerolog.Logger) {
	every := ackWait / 3
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
			if err := ticket.InProgress(); err != nil {
				log.Warn().Err(err).Msg("extend ticket lease")
			}
		}
	}
}

// translate replaces ComfyUI's prompt id with the job id. Both are UUIDs of
// the same length, so this is safe inside binary frames too.
func (r *run) translate(b []byte) json.RawMessage {
	return bytes.ReplaceAll(b, []byte(r.comfyID), []byte(r.job.ID))
}

// handleExecuted ships the files of a finished output node to mello,
// records the output, and returns the message with the participant's names
// (on the shipper's goroutine).
func (r *run) handleExecuted(ctx context.Context, data json.RawMessage) (json.RawMessage, error) {
	var msg map[string]json.RawMessage
	if err := json.Unmarshal(data, &msg); err != nil {
		return data, nil
	}
	var node string
	_ = json.Unmarshal(msg["node"], &node)
	output, err := r.shipOutput(ctx, node, msg["output"])
	if err != nil {
		return nil, fmt.Errorf("ship outputs of node %s: %w", node, err)
	}
	msg["output"] = output
	r.report(ctx, wire.Report{Kind: wire.ReportOutput, Node: node, Output: output})
	r.s.a.signals.Attempt.Signal(attemptSignal{JobID: r.job.ID, Attempt: r.attempt, Step: stepShipped, Node: node})
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
type historyEntry = comfyapi.HistoryEntry

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
func (r *run) awaitHistory(ctx context.Context, exited <-chan struct{}) (outcome, error) {
	deadline := time.Now().Add(10 * time.Minute)
	fails, polls, lost := 0, 0, 0
	for time.Now().Before(deadline) {
		_, err := r.history(ctx)
		switch {
		case err == nil:
			return r.outcomeFromHistory(ctx)
		case ctx.Err() != nil:
			return outcome{}, ctx.Err()
		case isClosed(exited):
			return outcome{}, errComfyExited
		case !errors.Is(err, errNotInHistory):
			if fails++; fails > 20 {
				return outcome{}, err
			}
		default:
			if r.isInterrupted() {
				// Without events the rounds of withdrawing happen here.
				if r.withdrawRound(ctx) {
					return interruptedOutcome(), nil
				}
			}
			// Neither finished nor queued nor running: ComfyUI lost it
			// (a restart we did not see, say). Asked twice, 2 s apart.
			if polls++; polls%4 == 0 && r.lostByComfy(ctx) {
				if lost++; lost >= 2 {
					return outcome{}, errors.New("ComfyUI has the prompt neither queued nor in its history")
				}
			} else if polls%4 == 0 {
				lost = 0
			}
		}
		if !backoff.Sleep(ctx, 500*time.Millisecond) {
			return outcome{}, ctx.Err()
		}
	}
	return outcome{}, errors.New("prompt did not finish")
}

// lostByComfy reports whether ComfyUI has the prompt neither running, nor
// pending, nor in its history.
func (r *run) lostByComfy(ctx context.Context) bool {
	running, pending, err := r.s.comfy.Queue(ctx)
	if err != nil {
		return false
	}
	for _, q := range append(running, pending...) {
		if q.PromptID == r.comfyID {
			return false
		}
	}
	_, err = r.history(ctx)
	return errors.Is(err, errNotInHistory)
}

// outcomeFromHistory reads how the prompt ended from its history entry.
func (r *run) outcomeFromHistory(ctx context.Context) (outcome, error) {
	h, err := r.history(ctx)
	if err != nil {
		return outcome{}, err
	}
	for _, m := range h.Status.Messages {
		ev, data, _ := comfyapi.HistoryMessage(m)
		switch ev {
		case comfyapi.MsgExecutionError:
			return outcome{kind: wire.ReportFailed, payload: data}, nil
		case comfyapi.MsgExecutionInterrupted:
			return outcome{kind: wire.ReportInterrupted, payload: data}, nil
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
			shipped, err := r.shipOutput(ctx, node, o)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, filestore.ErrQuotaExceeded) || errors.Is(err, ErrForeignOutput) {
					r.finish(ctx, outcome{kind: wire.ReportFailed, reason: refusedReason(err)}, nil)
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
	if r.prefetched {
		// The broker records a prefetched job running only once it
		// started; a final report before that would not apply.
		r.reportStarted(ctx)
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
	r.signalReported(out.kind)
}

// abandon gives the job back when the agent stops or a drain deadline
// passes mid-run: ComfyUI stops the prompt and the ticket is redelivered
// at once (to another agent) rather than after AckWait.
func (r *run) abandon(reason string, delay bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.s.comfy.Interrupt(ctx, r.comfyID); err != nil {
		r.log.Debug().Err(err).Msg("interrupt on stop")
	}
	r.retryOrFail(ctx, reason, nil, delay)
}

// retryOrFail gives the job back for another attempt, or, when this was
// the ticket's last delivery (MaxDeliver), fails it with the reason, which
// the participant sees.
func (r *run) retryOrFail(ctx context.Context, reason string, payload json.RawMessage, delay bool) {
	if max := r.s.maxDeliver; max > 0 && r.delivered >= uint64(max) {
		r.log.Warn().Str("reason", reason).Uint64("attempts", r.delivered).Msg("giving up on the job")
		r.finish(ctx, outcome{
			kind: wire.ReportFailed, payload: payload,
			reason: fmt.Sprintf("gave up after %d attempts: %s", r.delivered, reason),
		}, nil)
		return
	}
	r.log.Warn().Str("reason", reason).Msg("releasing job for another attempt")
	r.report(ctx, wire.Report{Kind: wire.ReportReleased, Reason: reason})
	if delay {
		_ = r.ticket.NakWithDelay(r.s.a.cfg.RetryDelay)
	} else {
		_ = r.ticket.Nak()
	}
	r.signal(stepReleased)
}

// release gives the job back for another attempt.
func (r *run) release(ctx context.Context, reason string) {
	r.retryOrFail(ctx, reason, nil, true)
}

func isClosed(ch <-chan struct{}) bool {
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
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
	try := 0
	err = backoff.Retry(ctx, reportRetry, 0, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, reportPublishTimeout)
		defer cancel()
		_, err := r.s.a.js.Publish(pctx, subj, data, jetstream.WithMsgID(rep.MsgID()))
		if err != nil {
			r.log.Warn().Err(err).Str("kind", string(rep.Kind)).Int("try", try).Msg("publish report")
			try++
		}
		return err
	})
	return err == nil
}

// A report is published again until JetStream stores it: each try waits
// reportPublishTimeout for the store's answer, the pauses between them
// are reportRetry's.
const reportPublishTimeout = 5 * time.Second

var reportRetry = backoff.Policy{Min: 200 * time.Millisecond, Max: 2 * time.Second}

// refusedReason is what a participant reads when an output is refused:
// over their disk quota, or written outside their folder.
func refusedReason(err error) string {
	if errors.Is(err, ErrForeignOutput) {
		return "the workflow wrote a file outside your folder on the GPU server, which is refused (a node that ignores filename_prefix?): " + err.Error()
	}
	return "your outputs do not fit your disk quota on the workshop server; delete some files and queue again (" + err.Error() + ")"
}
