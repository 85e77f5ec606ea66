package broker

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// intake takes one SUBMIT message: a new job gets its JOBS record (queued,
// numbered by its stream sequence); a known unfinished job is indexed; a
// job that already finished has its leftover submission removed. After a
// restart the ordered consumer replays SUBMIT from the start, which is how
// the queues are rebuilt.
func (b *Broker) intake(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		b.log.Error().Err(err).Msg("intake: message without metadata")
		return
	}
	seq := meta.Sequence.Stream
	var job wire.Job
	if err := json.Unmarshal(msg.Data(), &job); err != nil {
		b.log.Error().Err(err).Uint64("seq", seq).Msg("intake: undecodable job; removing it")
		_ = b.res.Submit.DeleteMsg(ctx, seq)
		return
	}
	user := strings.TrimPrefix(msg.Subject(), "submit.")
	if job.User != user || wire.ValidateToken("user", job.User) != nil || wire.ValidateToken("job", job.ID) != nil {
		b.log.Error().Str("subject", msg.Subject()).Str("job", job.ID).Msg("intake: job does not match its subject; removing it")
		_ = b.res.Submit.DeleteMsg(ctx, seq)
		return
	}
	if job.Pool == "" {
		job.Pool = wire.DefaultPool
	}
	key := wire.JobKey(job.User, job.ID)
	if _, ok := b.state.jobs[key]; ok {
		return
	}

	e := &jobEntry{}
	kve, err := b.res.Jobs.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		e.rec = wire.JobRecord{
			ID: job.ID, User: job.User, Pool: job.Pool, State: wire.StateQueued,
			Number: seq, SubmitSeq: seq,
			ClientID: job.ClientID, Prompt: job.Prompt, ExtraData: job.ExtraData,
			OutputsToExecute: job.OutputsToExecute, Inputs: job.Inputs,
			CreatedAt: job.SubmittedAt, ClientNumber: job.Number, Front: job.Front,
		}
		if e.rec.CreatedAt.IsZero() {
			e.rec.CreatedAt = now()
		}
		// The instructor's own jobs (the demo) count as bumped: under the
		// priority policy they go first.
		if b.isInstructor(job.User) {
			e.rec.Bumped, e.rec.BumpedAt = true, e.rec.CreatedAt
		}
		data, err := json.Marshal(e.rec)
		if err != nil {
			b.log.Error().Err(err).Str("job", job.ID).Msg("intake: encode record")
			return
		}
		e.rev, err = b.res.Jobs.Create(ctx, key, data)
		if err != nil {
			b.log.Error().Err(err).Str("job", job.ID).Msg("intake: create JOBS record")
			return
		}
	case err != nil:
		b.log.Error().Err(err).Str("job", job.ID).Msg("intake: read JOBS record")
		return
	default:
		if err := json.Unmarshal(kve.Value(), &e.rec); err != nil {
			b.log.Error().Err(err).Str("job", job.ID).Msg("intake: decode JOBS record")
			return
		}
		e.rev = kve.Revision()
		if e.rec.State.Final() {
			b.finish(ctx, e.rec)
			return
		}
	}
	b.state.jobs[key] = e
	// Index it as if it had just entered its current state.
	b.accountState(e, "")
	b.log.Debug().Str("job", job.ID).Str("user", job.User).Str("state", string(e.rec.State)).Msg("job taken in")
	b.dispatch(ctx, e.rec.Pool)
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
