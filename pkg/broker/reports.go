package broker

import (
	"context"
	"encoding/json"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// applyReportMsg applies one REPORTS message. Reports that cannot apply
// (stale attempt, finished job, malformed) are logged and dropped: they are
// acknowledged either way, so a bad report cannot wedge the consumer.
func (b *Broker) applyReportMsg(ctx context.Context, msg jetstream.Msg) {
	var r wire.Report
	if err := json.Unmarshal(msg.Data(), &r); err != nil {
		b.log.Error().Err(err).Str("subject", msg.Subject()).Msg("drop undecodable report")
		return
	}
	if agent, job, err := wire.ParseReportSubject(msg.Subject()); err != nil || agent != r.Agent || job != r.JobID {
		b.log.Error().Str("subject", msg.Subject()).Str("agent", r.Agent).Msg("drop report whose subject does not match it")
		return
	}
	b.applyReport(ctx, r)
	b.testSignals.reportApplied.Signal(r)
}

// applyReport applies one report to its job's record (on the core).
func (b *Broker) applyReport(ctx context.Context, r wire.Report) {
	log := b.log.With().Str("job", r.JobID).Str("kind", string(r.Kind)).Int("attempt", r.Attempt).Logger()
	e := b.state.jobs[wire.JobKey(r.User, r.JobID)]
	if e == nil {
		log.Debug().Msg("report for a finished or unknown job ignored")
		b.stoppedAttemptReported(ctx, r)
		return
	}
	if !b.adoptLostClaim(ctx, e, r, log) {
		return
	}
	// A prefetched job is held (dispatched, with its agent) until its
	// "started" report. Any report of that very attempt applies to it: an
	// output or the end also says it started, when the "started" report
	// was lost (an embedded server killed before it wrote it to REPORTS).
	// Ignoring them left the job held by an attempt that had finished and
	// acknowledged its ticket: nothing would ever end it.
	heldNotStarted := e.rec.State == wire.StateDispatched && e.rec.Agent != ""
	if (e.rec.State != wire.StateRunning && !heldNotStarted) || e.rec.Attempt != r.Attempt || e.rec.Agent != r.Agent {
		log.Info().Str("state", string(e.rec.State)).Int("current_attempt", e.rec.Attempt).
			Msg("report of a stale attempt ignored")
		return
	}
	if heldNotStarted && r.Kind != wire.ReportStarted && r.Kind != wire.ReportReleased {
		log.Warn().Msg("report of a prefetched attempt that never reported its start: taken as started")
		start := wire.Report{Kind: wire.ReportStarted, JobID: r.JobID, User: r.User, Agent: r.Agent, Attempt: r.Attempt, At: r.At}
		b.applyReport(ctx, start)
		if e.rec.State != wire.StateRunning {
			return // the start could not be recorded; logged there
		}
	}
	mutate := b.reportMutation(e, r, log)
	if mutate == nil {
		return
	}
	if err := b.transition(ctx, e, mutate); err != nil {
		log.Error().Err(err).Msg("apply report")
		return
	}
	rec := e.rec
	if rec.State.Final() {
		b.finish(ctx, rec)
		log.Info().Str("user", rec.User).Str("state", string(rec.State)).
			Dur("wait", rec.StartedAt.Sub(rec.CreatedAt)).Dur("run", rec.FinishedAt.Sub(rec.StartedAt)).
			Msg("job finished")
		b.dispatch(ctx, rec.Pool)
	}
}

// adoptLostClaim takes a claim whose record was lost as made when a report
// of the attempt it started comes. It reports whether the report may go
// on to apply (false: recording the claim failed; logged).
func (b *Broker) adoptLostClaim(ctx context.Context, e *jobEntry, r wire.Report, log zerolog.Logger) bool {
	if e.rec.State != wire.StateDispatched || e.rec.Agent != "" || r.Attempt != e.rec.Attempt+1 || r.Kind == wire.ReportReleased {
		return true
	}
	// The broker answered this agent's claim "go" for this attempt (no
	// other way to learn the number), but the record of the claim was
	// lost (an embedded server killed before it wrote it). The claim is
	// taken as made, so the attempt's reports apply instead of the job
	// running a second time. Had another agent claimed the job since, the
	// record would name it.
	if err := b.transition(ctx, e, func(rec *wire.JobRecord) {
		rec.State, rec.Attempt = wire.StateDispatched, r.Attempt
		rec.Agent, rec.Slot = r.Agent, r.Slot
	}); err != nil {
		log.Error().Err(err).Msg("record a claim whose record was lost")
		return false
	}
	e.claimedAt = time.Now()
	log.Warn().Str("agent", r.Agent).Msg("report of a claim whose record was lost: the claim is taken as made")
	return true
}

// reportMutation is the change a report of the job's current attempt makes
// to its record; nil when it changes nothing.
func (b *Broker) reportMutation(e *jobEntry, r wire.Report, log zerolog.Logger) func(rec *wire.JobRecord) {
	switch r.Kind {
	case wire.ReportStarted:
		if e.rec.State == wire.StateRunning {
			return nil // the claim already recorded the start
		}
		return func(rec *wire.JobRecord) {
			rec.State = wire.StateRunning
			rec.StartedAt = r.At
			if rec.StartedAt.IsZero() {
				rec.StartedAt = now()
			}
		}
	case wire.ReportOutput:
		if r.Node == "" || len(r.Output) == 0 {
			return nil
		}
		return func(rec *wire.JobRecord) {
			if rec.Outputs == nil {
				rec.Outputs = map[string]json.RawMessage{}
			}
			rec.Outputs[r.Node] = r.Output
		}
	case wire.ReportSucceeded, wire.ReportFailed, wire.ReportInterrupted:
		return finalMutation(r)
	case wire.ReportReleased:
		if e.stopReason != "" {
			// Given back after it was stopped: it ends here rather than
			// waiting for another attempt.
			reason := e.stopReason
			return func(rec *wire.JobRecord) {
				rec.State, rec.Reason, rec.FinishedAt = wire.StateInterrupted, reason, now()
			}
		}
		return func(rec *wire.JobRecord) {
			rec.State = wire.StateDispatched
			rec.Reason = r.Reason
			// No longer held: the next claim of the ticket takes it.
			rec.Agent, rec.Slot, rec.AgentBoot = "", "", ""
		}
	default:
		log.Warn().Msg("unknown report kind ignored")
		return nil
	}
}

// finalStates are the job states the end reports lead to.
var finalStates = map[wire.ReportKind]wire.JobState{
	wire.ReportSucceeded:   wire.StateSucceeded,
	wire.ReportFailed:      wire.StateFailed,
	wire.ReportInterrupted: wire.StateInterrupted,
}

// finalMutation records the end of a run from its end report.
func finalMutation(r wire.Report) func(rec *wire.JobRecord) {
	final := finalStates[r.Kind]
	return func(rec *wire.JobRecord) {
		rec.State = final
		rec.FinishedAt = r.At
		if rec.FinishedAt.IsZero() {
			rec.FinishedAt = now()
		}
		if len(r.Outputs) > 0 {
			if rec.Outputs == nil {
				rec.Outputs = map[string]json.RawMessage{}
			}
			for k, v := range r.Outputs {
				rec.Outputs[k] = v
			}
		}
		rec.Meta = r.Meta
		rec.Messages = r.Messages
		rec.Error = r.Error
		rec.Reason = r.Reason
	}
}
