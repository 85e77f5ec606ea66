package agent

import (
	"github.com/atelier-run/atelier/internal/testsignal"
	"github.com/atelier-run/atelier/pkg/wire"
)

// attemptStep is a phase change of one attempt of a job, as its test
// signal names it.
type attemptStep string

const (
	// stepClaimed: the broker answered the claim "go"; the run is held
	// (an interrupt finds it) and is about to be staged.
	stepClaimed attemptStep = "claimed"
	// stepStarted: the prompt is in ComfyUI (queued by execute, or
	// queued ahead and confirmed).
	stepStarted attemptStep = "started"
	// stepExecuting: ComfyUI began executing the prompt (execution_start).
	stepExecuting attemptStep = "executing"
	// stepShipped: one output node's files are stored in mello.
	stepShipped attemptStep = "shipped"
	// stepReported: the final report is stored (and the ticket
	// acknowledged, or, for a job dropped before it started, handed back
	// to be skipped).
	stepReported attemptStep = "reported"
	// stepReleased: the ticket went back to the queue for another
	// attempt (or the prefetched job was given back unrun).
	stepReleased attemptStep = "released"
	// stepEnded: the agent no longer holds the job.
	stepEnded attemptStep = "ended"
)

// attemptSignal is one attemptStep of one attempt.
type attemptSignal struct {
	JobID   string
	Attempt int
	Step    attemptStep
	// Prefetched: claimed while the slot was busy (stepClaimed).
	Prefetched bool
	// Node is the output node (stepShipped).
	Node string
	// Kind is the final report's kind (stepReported).
	Kind wire.ReportKind
}

// testSignals are the points of the agent a test can wait for
// (internal/testsignal). Each is off unless a test Inits it before Start.
type testSignals struct {
	// Attempt: a phase change of an attempt (attemptStep).
	Attempt testsignal.Signal[attemptSignal]
	// Heartbeat: a heartbeat was published.
	Heartbeat testsignal.Signal[wire.Heartbeat]
	// DrainDeadline: a drain's deadline passed, or the drain was
	// lifted or the agent stopped first; the value is the number of
	// running jobs the deadline released (-1: it never came).
	DrainDeadline testsignal.Signal[int]
	// Catalog: the broker accepted the agent's catalog report.
	Catalog testsignal.Signal[struct{}]
	// Fetch: a slot's pull for a ticket ended. An idle slot pulls
	// again and again (every FetchWait): a test that turns it on reads it.
	Fetch testsignal.Signal[fetchSignal]
}

// fetchSignal is one pull of a slot that ended.
type fetchSignal struct {
	Slot string
	// Prefetch: pulled while the slot's GPU was busy.
	Prefetch bool
	// Got: the pull brought a job, claimed and staged.
	Got bool
}

// signal sends step for r's attempt.
func (r *run) signal(step attemptStep) {
	r.s.a.signals.Attempt.Signal(attemptSignal{JobID: r.job.ID, Attempt: r.attempt, Step: step, Prefetched: r.prefetched})
}

// signalReported sends stepReported with the report's kind.
func (r *run) signalReported(kind wire.ReportKind) {
	r.s.a.signals.Attempt.Signal(attemptSignal{JobID: r.job.ID, Attempt: r.attempt, Step: stepReported, Kind: kind})
}
