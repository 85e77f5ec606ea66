package agent

import (
	"context"
	"time"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/wire"
)

// Taking a prompt back from ComfyUI. ComfyUI's POST /interrupt with a
// prompt id acts only on the prompt that is executing: one still pending in
// ComfyUI's queue (behind another, or queued a moment ago) is untouched,
// and one its worker has just taken off the queue but not yet started is
// untouched too, because ComfyUI clears its interrupt flag when an
// execution begins. So the agent deletes the prompt from the queue and
// interrupts it, and keeps doing so until ComfyUI has let go of it: it
// ended (it is in the history, and its events say how), or it was removed
// before it ran (neither running, nor pending, nor in the history: no
// event will ever come).

// interruptedBeforeStart is the reason of a run whose prompt was taken
// out of ComfyUI's queue before it ran.
const interruptedBeforeStart = "interrupted before it started"

// withdrawPauses are the pauses between two rounds of delete and
// interrupt while ComfyUI still holds an interrupted prompt: 50 ms,
// doubling, at most a second.
var withdrawPauses = backoff.Policy{Min: 50 * time.Millisecond, Max: time.Second}

// comfyPromptID is the attempt's prompt id in ComfyUI (execute replaces it
// when it queues the prompt afresh).
func (r *run) comfyPromptID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.comfyID
}

// isInterrupted reports whether an interrupt was requested.
func (r *run) isInterrupted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.interrupted
}

// stopInComfy deletes the prompt from ComfyUI's queue (if it is pending)
// and interrupts it (if it is executing). Either is a no-op otherwise.
func (r *run) stopInComfy(ctx context.Context, id string) {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.s.comfy.DeleteQueued(ictx, id); err != nil {
		r.log.Debug().Err(err).Msg("delete prompt from ComfyUI's queue")
	}
	if err := r.s.comfy.Interrupt(ictx, id); err != nil {
		r.log.Warn().Err(err).Msg("interrupt in ComfyUI")
	}
}

// withdrawRound is one round for a followed run: stop the prompt, then
// report whether ComfyUI removed it before it ran (the run then ends
// interrupted at once: it will never produce an event).
func (r *run) withdrawRound(ctx context.Context) (removed bool) {
	r.stopInComfy(ctx, r.comfyID)
	return r.lostByComfy(ctx)
}

// interruptedOutcome is how a run ends whose prompt ComfyUI dropped from
// its queue before running it.
func interruptedOutcome() outcome {
	return outcome{kind: wire.ReportInterrupted, reason: interruptedBeforeStart, notRun: true}
}

// withdrawUnfollowedFor bounds how long the agent goes on withdrawing a
// prompt nobody follows.
const withdrawUnfollowedFor = 30 * time.Second

// withdrawUnfollowed takes a prompt nobody follows (queued ahead, then
// dropped) out of ComfyUI. A first round happens now (usually enough: the
// prompt is pending, and deleted); while ComfyUI still holds it — about to
// execute it, and so deaf to the interrupt it got — the rounds go on in
// the background, a bounded time, so that the caller (an interrupt the
// broker waits on) is not held.
func (r *run) withdrawUnfollowed(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	held := r.withdrawUnfollowedRound(ctx, id)
	cancel()
	if !held {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), withdrawUnfollowedFor)
		defer cancel()
		pauses := backoff.New(withdrawPauses)
		for {
			if !pauses.Wait(ctx) {
				r.log.Warn().Str("prompt", id).Msg("ComfyUI still holds a withdrawn prompt")
				return
			}
			if !r.withdrawUnfollowedRound(ctx, id) {
				return
			}
		}
	}()
}

// withdrawUnfollowedRound deletes and interrupts the prompt and reports
// whether ComfyUI still holds it (pending or running).
func (r *run) withdrawUnfollowedRound(ctx context.Context, id string) (held bool) {
	r.stopInComfy(ctx, id)
	running, pending, err := r.s.comfy.Queue(ctx)
	if err != nil {
		// ComfyUI does not answer: a restart (which forgets its queue)
		// or the agent stopping; nothing more to do.
		r.log.Debug().Err(err).Msg("read ComfyUI's queue after withdrawing a prompt")
		return false
	}
	for _, q := range append(running, pending...) {
		if q.PromptID == id {
			return true
		}
	}
	return false
}
