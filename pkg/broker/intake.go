package broker

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// intake takes one SUBMIT message: a new job gets its JOBS record (queued,
// numbered by its stream sequence); a known unfinished job is indexed; a
// job that already finished has its leftover submission removed, unless
// the message is newer than the record: then the participant queued the
// same prompt id again and it runs again, as in ComfyUI. After a
// restart the ordered consumer replays SUBMIT from the start, which is how
// the queues are rebuilt.
func (b *Broker) intake(ctx context.Context, msg jetstream.Msg) {
	job, seq, ok := b.decodeSubmission(ctx, msg)
	if !ok {
		return
	}
	key := wire.JobKey(job.User, job.ID)
	if e, ok := b.state.jobs[key]; ok {
		if seq != e.rec.SubmitSeq {
			// The same prompt id again while it is unfinished (the proxy
			// refuses that; two submissions raced past it): one JOBS record
			// cannot run twice at once.
			b.dropSubmission(ctx, job, seq, "the prompt id is already queued")
		}
		return
	}
	e, ok := b.recordSubmission(ctx, job, seq)
	if !ok {
		return
	}
	b.state.jobs[key] = e
	b.applyUserCap(job.User)
	// Index it as if it had just entered its current state.
	b.accountState(e, "")
	b.testSignals.jobChanged.Signal(jobChange{Rec: e.rec})
	b.log.Debug().Str("job", job.ID).Str("user", job.User).Str("state", string(e.rec.State)).Msg("job taken in")
	b.dispatch(ctx, e.rec.Pool)
	if e.rec.State == wire.StateQueued {
		// It waits: its payload stays in JOBS until it leaves the queue.
		// (A job dispatched at once, above, never had it read back.)
		e.lighten()
	}
}

// decodeSubmission reads a SUBMIT message's job and stream sequence. A
// message that is no valid job of its subject's user is removed (ok
// false).
func (b *Broker) decodeSubmission(ctx context.Context, msg jetstream.Msg) (job wire.Job, seq uint64, ok bool) {
	meta, err := msg.Metadata()
	if err != nil {
		b.log.Error().Err(err).Msg("intake: message without metadata")
		return job, 0, false
	}
	seq = meta.Sequence.Stream
	if err := json.Unmarshal(msg.Data(), &job); err != nil {
		b.log.Error().Err(err).Uint64("seq", seq).Msg("intake: undecodable job; removing it")
		_ = b.res.Submit.DeleteMsg(ctx, seq)
		return job, seq, false
	}
	user, err := wire.ParseSubmitSubject(msg.Subject())
	if err != nil || job.User != user || wire.ValidateToken("job", job.ID) != nil {
		b.log.Error().Str("subject", msg.Subject()).Str("job", job.ID).Msg("intake: job does not match its subject; removing it")
		_ = b.res.Submit.DeleteMsg(ctx, seq)
		return job, seq, false
	}
	if job.Pool == "" {
		job.Pool = wire.DefaultPool
	}
	return job, seq, true
}

// recordSubmission finds or writes the JOBS record of a job the broker
// does not index yet: a new job's queued record, a finished prompt id's
// new run, or the record a restarted broker finds. It returns the entry to
// index, or false when there is none (a leftover submission, a finished
// job, an error; each handled or logged here).
func (b *Broker) recordSubmission(ctx context.Context, job wire.Job, seq uint64) (*jobEntry, bool) {
	key := wire.JobKey(job.User, job.ID)
	e := &jobEntry{}
	kve, err := b.res.Jobs.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		e.rec = b.newRecord(job, seq)
		data, err := json.Marshal(e.rec)
		if err != nil {
			b.log.Error().Err(err).Str("job", job.ID).Msg("intake: encode record")
			return nil, false
		}
		e.rev, err = b.res.Jobs.Create(ctx, key, data)
		if err != nil {
			b.log.Error().Err(err).Str("job", job.ID).Msg("intake: create JOBS record")
			return nil, false
		}
		return e, true
	case err != nil:
		b.log.Error().Err(err).Str("job", job.ID).Msg("intake: read JOBS record")
		return nil, false
	}
	if err := json.Unmarshal(kve.Value(), &e.rec); err != nil {
		b.log.Error().Err(err).Str("job", job.ID).Msg("intake: decode JOBS record")
		return nil, false
	}
	e.rev = kve.Revision()
	switch {
	case seq < e.rec.SubmitSeq:
		// Left over from an earlier run of this prompt id.
		b.dropSubmission(ctx, job, seq, "")
		return nil, false
	case seq > e.rec.SubmitSeq && e.rec.State.Final():
		return b.runAgain(ctx, e, job, seq, kve.Revision())
	case seq > e.rec.SubmitSeq:
		b.dropSubmission(ctx, job, seq, "the prompt id is already queued")
		return nil, false
	case e.rec.State.Final():
		b.finish(ctx, e.rec)
		return nil, false
	}
	return e, true
}

// runAgain records a new run of a finished prompt id the participant
// queued again: ComfyUI runs it again, so do we. The counters carry on,
// so the new run's tickets and reports never look like the old run's.
func (b *Broker) runAgain(ctx context.Context, e *jobEntry, job wire.Job, seq, rev uint64) (*jobEntry, bool) {
	prev := e.rec
	e.rec = b.newRecord(job, seq)
	e.rec.Releases, e.rec.Attempt = prev.Releases, prev.Attempt
	data, err := json.Marshal(e.rec)
	if err != nil {
		b.log.Error().Err(err).Str("job", job.ID).Msg("intake: encode record")
		return nil, false
	}
	e.rev, err = b.res.Jobs.Update(ctx, wire.JobKey(job.User, job.ID), data, rev)
	if err != nil {
		b.log.Error().Err(err).Str("job", job.ID).Msg("intake: record the new run of a prompt id")
		return nil, false
	}
	b.log.Info().Str("job", job.ID).Str("user", job.User).Msg("finished prompt id queued again: it runs again")
	return e, true
}

// newRecord is the queued JOBS record of a job taken in at seq.
func (b *Broker) newRecord(job wire.Job, seq uint64) wire.JobRecord {
	rec := wire.JobRecord{
		ID: job.ID, User: job.User, Pool: job.Pool, State: wire.StateQueued,
		Number: seq, SubmitSeq: seq,
		ClientID: job.ClientID, Prompt: job.Prompt, ExtraData: job.ExtraData,
		OutputsToExecute: job.OutputsToExecute, Inputs: job.Inputs,
		CreatedAt: job.SubmittedAt, ClientNumber: job.Number, Front: job.Front,
	}
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = now()
	}
	// The instructor's own jobs (the demo) count as bumped: under the
	// priority policy they go first.
	if b.isInstructor(job.User) {
		rec.Bumped, rec.BumpedAt = true, rec.CreatedAt
	}
	return rec
}

// dropSubmission removes a SUBMIT message that will not become a run (a
// leftover, or a second submission of an unfinished prompt id); reason,
// when set, is logged as a warning.
func (b *Broker) dropSubmission(ctx context.Context, job wire.Job, seq uint64, reason string) {
	if reason != "" {
		b.log.Warn().Str("job", job.ID).Str("user", job.User).Uint64("seq", seq).Str("reason", reason).
			Msg("intake: submission dropped")
	}
	if err := b.res.Submit.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		b.log.Warn().Err(err).Str("job", job.ID).Uint64("seq", seq).Msg("remove submission from SUBMIT")
	}
}

// isInstructor reports whether the registry knows user as an instructor or
// admin. A broker without a registry (an external deployment that keeps
// users elsewhere) treats everyone as a participant.
func (b *Broker) isInstructor(user string) bool {
	if b.registry == nil {
		return false
	}
	u, err := b.registry.Get(user)
	return err == nil && (u.Role == registry.RoleInstructor || u.Role == registry.RoleAdmin)
}

// applyUserCap gives the scheduler user's own running cap from the
// registry (quotas.max_running), or the default (MaxRunningPerUser) when
// the registry sets none.
func (b *Broker) applyUserCap(user string) {
	if b.registry == nil {
		return
	}
	u, err := b.registry.Get(user)
	if err != nil {
		return
	}
	b.state.sched.SetMaxRunning(user, maxRunningOf(u))
}

func maxRunningOf(u registry.User) int {
	if u.Quotas == nil {
		return 0
	}
	return u.Quotas.MaxRunning
}

// refreshUserCaps re-reads the registry's running caps of the users with
// unfinished jobs (an edited registry takes effect without a restart).
func (b *Broker) refreshUserCaps() {
	if b.registry == nil || len(b.state.jobs) == 0 {
		return
	}
	users, err := b.registry.List()
	if err != nil {
		b.log.Warn().Err(err).Msg("read the registry's running caps")
		return
	}
	byID := make(map[string]registry.User, len(users))
	for _, u := range users {
		byID[u.ID] = u
	}
	seen := map[string]bool{}
	for _, e := range b.state.jobs {
		if seen[e.rec.User] {
			continue
		}
		seen[e.rec.User] = true
		b.state.sched.SetMaxRunning(e.rec.User, maxRunningOf(byID[e.rec.User]))
	}
}
