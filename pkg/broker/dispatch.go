package broker

import (
	"context"
	"encoding/json"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// capacity is the number of tickets a pool's live, non-draining agents can
// hold: their healthy slots plus what they prefetch.
func (b *Broker) capacity(pool string) int {
	n := 0
	for _, a := range b.state.agents {
		if a.hb.Pool != pool || a.hb.Draining {
			continue
		}
		healthy := 0
		for _, s := range a.hb.Slots {
			if s.State == wire.SlotIdle || s.State == wire.SlotBusy {
				healthy++
			}
		}
		if healthy > 0 {
			n += healthy + a.hb.Prefetch
		}
	}
	return n
}

// dispatch releases tickets for a pool while it has free slots (plus the
// prefetch), taking jobs in the scheduler's order. Deciding at slot time,
// not at submit time, is what makes the order fair.
func (b *Broker) dispatch(ctx context.Context, pool string) {
	if b.state.paused {
		return
	}
	slots := b.capacity(pool)
	if slots == 0 {
		return
	}
	for b.state.inflight[pool] < slots+b.cfg.Prefetch {
		it, ok := b.state.sched.Next(pool)
		if !ok {
			return
		}
		e := b.state.jobs[wire.JobKey(it.User, it.JobID)]
		if e == nil || e.rec.State != wire.StateQueued {
			b.state.sched.Release(it.User)
			continue
		}
		// Publish first, then record: a crash in between leaves a queued
		// job with a ticket out, which a claim handles; the reverse order
		// could leave a dispatched job with no ticket at all.
		t, err := b.publishTicket(ctx, e)
		if err != nil {
			b.log.Error().Err(err).Str("pool", pool).Str("job", t.JobID).Msg("release ticket; will retry")
			b.state.sched.Release(it.User)
			b.state.sched.Push(it)
			return
		}
		b.state.picked = e.rec.Key()
		err = b.transition(ctx, e, func(r *wire.JobRecord) {
			r.State = wire.StateDispatched
			r.Releases = t.Release
			r.DispatchedAt = now()
		})
		b.state.picked = ""
		if err != nil {
			if e.rec.State == wire.StateQueued {
				b.state.sched.Release(it.User)
				b.state.sched.Push(it)
			}
			b.log.Error().Err(err).Str("job", t.JobID).Msg("record dispatch")
			continue
		}
		b.log.Debug().Str("job", t.JobID).Str("user", t.User).Str("pool", pool).Msg("ticket released")
	}
}

// dispatchAll gives every pool with queued jobs a chance.
func (b *Broker) dispatchAll(ctx context.Context) {
	for _, pool := range b.state.sched.Pools() {
		b.dispatch(ctx, pool)
	}
}

// publishTicket publishes the job's next ticket on its pool's DISPATCH
// subject and notes where it lies in the stream. The caller records
// Releases.
func (b *Broker) publishTicket(ctx context.Context, e *jobEntry) (wire.Ticket, error) {
	t := wire.Ticket{JobID: e.rec.ID, User: e.rec.User, Pool: e.rec.Pool, Release: e.rec.Releases + 1}
	data, _ := json.Marshal(t)
	ack, err := b.js.Publish(ctx, wire.DispatchSubject(t.Pool), data, jetstream.WithMsgID(t.MsgID()))
	if err != nil {
		return t, err
	}
	e.ticketSeq = ack.Sequence
	b.testSignals.ticketReleased.Signal(t)
	return t, nil
}
