package broker

import (
	"context"
	"errors"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
)

// Stopping a job: cancel and interrupt end a job exactly once, whatever
// stage it is at and whatever the agent holding it says.
//
//   - queued, or dispatched with no slot holding it: cancelled at once; a
//     ticket still out is answered skip when claimed.
//   - held prefetched by a slot: cancelled at once; the agent is told to
//     drop it.
//   - running: the agent is told to interrupt it and the job ends as the
//     agent reports (interrupted). If the agent cannot be reached, or
//     answers that none of its slots holds the job (a claim answered an
//     instant ago whose run the agent has not registered yet, say), the
//     job is cancelled here at once.
//
// Once a job is final its reports are ignored, so a late report of the
// stopped attempt cannot bring it back. The broker remembers stopped
// attempts for a while: a sign of life from one (an output, a start) means
// it runs after all, and the interrupt is sent again so the GPU is freed.

// stoppedTTL is how long a stopped attempt is remembered.
const stoppedTTL = 10 * time.Minute

// stoppedAttempt is an attempt the broker ended while its agent may still
// run it.
type stoppedAttempt struct {
	agent    string
	attempt  int
	at       time.Time
	lastSent time.Time
}

// stopJobs cancels or interrupts the jobs pick chooses (pick runs on the
// core), then sends their agents the interrupts.
func (b *Broker) stopJobs(ctx context.Context, reason string, pick func() ([]*jobEntry, error)) wire.CancelReply {
	var (
		affected []string
		ctls     []ctlCall
		failure  error
	)
	err := b.do(ctx, func() {
		var targets []*jobEntry
		targets, failure = pick()
		for _, e := range targets {
			c, err := b.cancelJob(ctx, e, reason)
			if err != nil {
				failure = err
				continue
			}
			affected = append(affected, e.rec.ID)
			if c != nil {
				ctls = append(ctls, *c)
			}
		}
	})
	if err != nil {
		return wire.CancelReply{APIReply: apiError(err)}
	}
	b.sendControls(ctx, ctls)
	return wire.CancelReply{APIReply: apiError(failure), Affected: affected}
}

func callerName(c wire.Caller) string {
	if c.User == "" {
		return string(c.Role)
	}
	return c.User
}

// ctlCall is a command for an agent, sent after the core's work is done
// (a request to an agent must not stall the core).
type ctlCall struct {
	agent string
	req   wire.ControlRequest
	// onFail runs on the core when the command did not take: the agent
	// could not be reached, refused, or (for an interrupt) holds no such
	// job. why says which.
	onFail func(why string)
}

// cancelJob ends or interrupts one unfinished job (on the core).
func (b *Broker) cancelJob(ctx context.Context, e *jobEntry, reason string) (*ctlCall, error) {
	rec := e.rec
	interrupt := wire.ControlRequest{Op: wire.CtlInterrupt, JobID: rec.ID, User: rec.User}
	switch {
	case rec.State == wire.StateQueued || (rec.State == wire.StateDispatched && rec.Agent == ""):
		return nil, b.endJob(ctx, e, wire.StateCancelled, reason)
	case rec.State == wire.StateDispatched:
		// Held prefetched by a slot: cancelled now; the agent drops it.
		if err := b.endJob(ctx, e, wire.StateCancelled, reason); err != nil {
			return nil, err
		}
		b.rememberStopped(rec)
		return &ctlCall{agent: rec.Agent, req: interrupt}, nil
	case rec.State == wire.StateRunning:
		// Until the agent reports the end, a new claim of the job (its
		// attempt died) or a release ends it instead of running it again.
		e.stopReason = reason
		key, attempt, agent := rec.Key(), rec.Attempt, rec.Agent
		return &ctlCall{
			agent: agent,
			req:   interrupt,
			onFail: func(why string) {
				e := b.state.jobs[key]
				if e == nil || e.rec.State != wire.StateRunning || e.rec.Attempt != attempt || e.rec.Agent != agent {
					return // it ended, or moved on to another attempt, meanwhile
				}
				if err := b.endJob(ctx, e, wire.StateCancelled, reason+" ("+why+")"); err != nil {
					b.log.Error().Err(err).Str("job", e.rec.ID).Msg("cancel a job its agent does not run")
					return
				}
				b.rememberStopped(e.rec)
			},
		}, nil
	}
	return nil, errors.Join(ErrInvalid, errors.New("job "+rec.ID+" is "+string(rec.State)))
}

// endJob moves an unfinished job to a final state the broker decides
// (cancelled, interrupted, failed), removes its submission and lets the
// pool take the next job.
func (b *Broker) endJob(ctx context.Context, e *jobEntry, state wire.JobState, reason string) error {
	err := b.transition(ctx, e, func(r *wire.JobRecord) {
		r.State, r.Reason, r.FinishedAt = state, reason, now()
	})
	if err != nil {
		return err
	}
	b.finish(ctx, e.rec)
	b.log.Info().Str("job", e.rec.ID).Str("user", e.rec.User).Str("state", string(state)).Str("reason", reason).Msg("job ended by the broker")
	b.dispatch(ctx, e.rec.Pool)
	return nil
}

// rememberStopped notes that rec's attempt was ended while its agent may
// still run it.
func (b *Broker) rememberStopped(rec wire.JobRecord) {
	if rec.Agent == "" {
		return
	}
	b.state.stopped[rec.Key()] = &stoppedAttempt{agent: rec.Agent, attempt: rec.Attempt, at: time.Now()}
}

// stoppedAttemptReported handles a report of a job that is no longer
// unfinished (on the core): from an attempt the broker stopped, anything
// but its end means it still runs, and it is interrupted again.
func (b *Broker) stoppedAttemptReported(ctx context.Context, r wire.Report) {
	key := wire.JobKey(r.User, r.JobID)
	s := b.state.stopped[key]
	if s == nil || s.agent != r.Agent || s.attempt != r.Attempt {
		return
	}
	switch r.Kind {
	case wire.ReportSucceeded, wire.ReportFailed, wire.ReportInterrupted, wire.ReportReleased:
		delete(b.state.stopped, key) // the attempt is over
		return
	}
	if time.Since(s.lastSent) < time.Second {
		return
	}
	s.lastSent = time.Now()
	b.log.Warn().Str("job", r.JobID).Str("agent", r.Agent).Int("attempt", r.Attempt).
		Msg("a stopped job still runs on its agent; interrupting it again")
	req := wire.ControlRequest{Op: wire.CtlInterrupt, JobID: r.JobID, User: r.User}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		if _, err := b.control(ctx, r.Agent, req); err != nil {
			b.log.Warn().Err(err).Str("job", r.JobID).Msg("interrupt a stopped job again")
		}
	}()
}

// pruneStopped forgets stopped attempts after stoppedTTL.
func (b *Broker) pruneStopped() {
	for key, s := range b.state.stopped {
		if time.Since(s.at) > stoppedTTL {
			delete(b.state.stopped, key)
		}
	}
}

// sendControls sends agent commands (off the core) and applies their
// fallbacks on the core.
func (b *Broker) sendControls(ctx context.Context, calls []ctlCall) {
	for _, c := range calls {
		reply, err := b.control(ctx, c.agent, c.req)
		var why string
		switch {
		case err != nil:
			why = "agent unreachable"
		case reply.Error != "":
			why = "agent refused: " + reply.Error
			err = errors.New(reply.Error)
		case c.req.Op == wire.CtlInterrupt && !reply.Done:
			// The agent answered, but none of its slots holds the job: it
			// must not count as stopped there.
			why = "not running on its agent"
		default:
			continue
		}
		b.log.Warn().Err(err).Str("agent", c.agent).Str("op", c.req.Op).Str("job", c.req.JobID).Str("why", why).
			Msg("agent command did not take")
		if c.onFail != nil {
			_ = b.do(ctx, func() { c.onFail(why) })
		}
	}
}
