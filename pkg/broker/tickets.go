package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// Dead tickets. A ticket is delivered at most MaxDeliver times, and an
// agent uses a delivery every time it hands a ticket back without running
// it (a prefetch dropped on drain, a ticket for a job it already holds, a
// claim answered "later", a fetch during a drain). When the last delivery
// is such a hand-back, JetStream stops delivering the ticket and the job
// would stay dispatched for ever.
//
// The server announces it on $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.
// Advisories are fire-and-forget, so the DEADTICKETS stream captures them
// (one missed while the broker restarts waits there), and the broker
// consumes that stream: a dead ticket of a job still waiting for a slot is
// released again, with a fresh delivery budget, unless the job's real
// attempts (claims answered "go") are used up, in which case it fails with
// the reason. A dead ticket of a job a slot still holds is kept until that
// attempt ends. A periodic check also re-releases a waiting job whose
// ticket has vanished from DISPATCH, or is still there but out of
// deliveries with its advisory lost (checkTickets).

const (
	// StreamDeadTickets captures the max-deliveries advisories of the
	// DISPATCH consumers.
	StreamDeadTickets = "DEADTICKETS"
	// consumerDeadTickets is the broker's durable consumer on it.
	consumerDeadTickets = "broker-dead-tickets"
)

// deadTicketSubjects are the advisories of every pool's DISPATCH consumer.
var deadTicketSubjects = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + wire.StreamDispatch + ".*"

// maxDeliveriesAdvisory is the part of the server's advisory
// (io.nats.jetstream.advisory.v1.max_deliver) the broker reads.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// subscribeDeadTickets provisions DEADTICKETS and consumes it.
func (b *Broker) subscribeDeadTickets(ctx context.Context) error {
	st, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamDeadTickets,
		Description: "Atelier: advisories of tickets that ran out of deliveries",
		Subjects:    []string{deadTicketSubjects},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     b.cfg.Limits.MaxTickets,
		MaxBytes:    16 << 20,
		MaxAge:      b.cfg.Limits.HistoryTTL,
		Storage:     b.cfg.Limits.Storage,
	})
	if err != nil {
		return fmt.Errorf("broker: provision stream %s: %w", StreamDeadTickets, err)
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       consumerDeadTickets,
		Description:   "Atelier: the broker re-releases dead tickets",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 1000,
	})
	if err != nil {
		return fmt.Errorf("broker: dead tickets consumer: %w", err)
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		resolved := true
		if err := b.handleDeadTicket(ctx, msg.Data(), &resolved); err != nil {
			return // stopping: the advisory is redelivered to the next broker
		}
		if resolved {
			_ = msg.Ack()
		} else {
			// The job's slot still holds it: look again later.
			_ = msg.NakWithDelay(b.cfg.TicketCheckInterval)
		}
	}, jetstream.PullMaxMessages(16))
	if err != nil {
		return fmt.Errorf("broker: dead tickets: %w", err)
	}
	b.consum = append(b.consum, cc)
	return nil
}

// handleDeadTicket reads the dead ticket from DISPATCH (off the core) and
// settles it on the core. It returns errStopped when the broker stops.
func (b *Broker) handleDeadTicket(ctx context.Context, data []byte, resolved *bool) error {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(data, &adv); err != nil || adv.Stream != wire.StreamDispatch || adv.StreamSeq == 0 {
		b.log.Error().Str("advisory", string(data)).Msg("drop an undecodable max-deliveries advisory")
		return nil
	}
	var t wire.Ticket
	raw, err := b.res.Dispatch.GetMsg(ctx, adv.StreamSeq)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		// Acknowledged or removed meanwhile: a late ack of the last
		// delivery, or this advisory came twice.
		return nil
	case err != nil:
		b.log.Warn().Err(err).Uint64("seq", adv.StreamSeq).Msg("read a dead ticket; will retry")
		*resolved = false
		return nil
	}
	if err := json.Unmarshal(raw.Data, &t); err != nil {
		b.log.Error().Err(err).Uint64("seq", adv.StreamSeq).Msg("remove an undecodable dead ticket")
		_ = b.res.Dispatch.DeleteMsg(ctx, adv.StreamSeq)
		return nil
	}
	return b.do(ctx, func() {
		*resolved = b.settleDeadTicket(ctx, t, adv.StreamSeq, fmt.Sprintf("its ticket ran out of deliveries (%d)", adv.Deliveries))
	})
}

// settleDeadTicket decides about a job whose ticket at seq can no longer be
// delivered (on the core). It reports whether the matter is settled (false:
// a slot still holds the job; ask again later).
func (b *Broker) settleDeadTicket(ctx context.Context, t wire.Ticket, seq uint64, why string) bool {
	log := b.log.With().Str("job", t.JobID).Str("user", t.User).Int("release", t.Release).Uint64("seq", seq).Logger()
	e := b.state.jobs[wire.JobKey(t.User, t.JobID)]
	switch {
	case e == nil, t.Release < e.rec.Releases, e.rec.State == wire.StateQueued:
		// Finished, or a newer ticket is out, or (a crash between publish
		// and record) the job waits for the dispatcher anyway.
		b.removeTicket(ctx, seq)
		return true
	case held(e):
		// A slot holds the job: if it ends, fine; if it gives the job
		// back, the job needs a ticket then. Unless the holder does not
		// hold it after all (orphans.go): then it is given back now.
		dropped, settled := b.dropOrphanedHold(ctx, e, seq)
		if !dropped {
			return settled
		}
	}
	if max := b.cfg.Limits.MaxDeliver; e.rec.Attempt >= max {
		reason := fmt.Sprintf("gave up after %d attempts", e.rec.Attempt)
		if e.rec.Reason != "" {
			reason += ": " + e.rec.Reason
		}
		if err := b.endJob(ctx, e, wire.StateFailed, reason); err != nil {
			log.Error().Err(err).Msg("fail a job out of attempts")
			return false
		}
		b.removeTicket(ctx, seq)
		return true
	}
	if err := b.rerelease(ctx, e, why); err != nil {
		log.Error().Err(err).Msg("release a dead ticket again; will retry")
		return false
	}
	b.removeTicket(ctx, seq)
	return true
}

// rerelease gives a dispatched job that no slot holds a new ticket.
func (b *Broker) rerelease(ctx context.Context, e *jobEntry, why string) error {
	t, err := b.publishTicket(ctx, e)
	if err != nil {
		return fmt.Errorf("publish ticket: %w", err)
	}
	if err := b.transition(ctx, e, func(r *wire.JobRecord) { r.Releases = t.Release }); err != nil {
		return fmt.Errorf("record release: %w", err)
	}
	b.log.Warn().Str("job", e.rec.ID).Str("user", e.rec.User).Int("release", t.Release).
		Int("attempts", e.rec.Attempt).Str("why", why).Msg("ticket released again")
	return nil
}

// removeTicket deletes a dead ticket from DISPATCH (it counts against the
// stream's limit otherwise).
func (b *Broker) removeTicket(ctx context.Context, seq uint64) {
	if err := b.res.Dispatch.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		b.log.Warn().Err(err).Uint64("seq", seq).Msg("remove a dead ticket")
	}
}

// checkTickets re-releases waiting jobs whose ticket vanished from
// DISPATCH or ran out of deliveries unnoticed (on the core, every
// TicketCheckInterval). A ticket this broker released is looked up by its
// sequence. Tickets released before a restart are not known by sequence;
// an embedded server killed without a sync can also lose a ticket it had
// acknowledged while the job's record says dispatched. For those the
// stream is scanned once, off the core.
//
// A ticket still in DISPATCH may be dead all the same: its max-deliveries
// advisory can be lost (an embedded server killed before DEADTICKETS
// synced it, or DEADTICKETS full). The server keeps a dead ticket in the
// WorkQueue stream, unacknowledged, but no longer counts it as pending
// delivery or acknowledgement, and the pool's consumer tells (see
// poolTickets): a ticket at or below its ack floor that is still there is
// dead; a delivered ticket above the floor is taken for dead when the pool
// has dead tickets and an agent's fetch waits while the job stays waiting
// with the same ticket over two checks in a row: a live ticket would have
// gone to that fetch. Releasing a waiting job again is harmless if its old
// ticket was not dead after all (the old ticket is removed; a claim of
// either is answered as usual).
func (b *Broker) checkTickets(ctx context.Context) {
	unknown := false
	pools := map[string]*poolTickets{}
	suspects := map[string]uint64{}
	for key, e := range b.state.jobs {
		// Waiting jobs, and held ones whose holder does not hold them
		// (their dead ticket is then settled like a waiting job's).
		orphan := held(e) && b.notHeldReason(e) != ""
		if (e.rec.State != wire.StateDispatched || e.rec.Agent != "") && !orphan {
			continue
		}
		if e.ticketSeq == 0 {
			unknown = true
			continue
		}
		pt := pools[e.rec.Pool]
		if pt == nil {
			// Read before the ticket: a ticket the consumer had settled
			// then and that is still there after is dead.
			pt = b.readPoolTickets(ctx, e.rec.Pool)
			pools[e.rec.Pool] = pt
		}
		seq := e.ticketSeq
		raw, err := b.res.Dispatch.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) && orphan {
			// The holder acknowledged the ticket: it ended the attempt
			// and reported, and the report is on its way. Unless it was
			// lost (published to an embedded server killed before it
			// wrote it): then, with no report left to apply and the
			// holder still not holding the job at the next look, the
			// job is given back and released again.
			b.settleOrphanWithoutTicket(ctx, e)
			continue
		}
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			if err := b.rerelease(ctx, e, "its ticket is no longer in DISPATCH"); err != nil {
				b.log.Error().Err(err).Str("job", e.rec.ID).Msg("release a vanished ticket again")
			}
			continue
		}
		if err != nil || !pt.ok || seq > pt.Delivered {
			continue // unreadable now (the next check tries again), or not delivered yet
		}
		why := ""
		switch {
		case seq <= pt.AckFloor:
			why = "its ticket ran out of deliveries (below the consumer's ack floor)"
		case pt.Waiting > 0 && b.deadTickets(ctx, pt) > 0:
			if b.state.suspects[key] != seq {
				suspects[key] = seq // look again at the next check
				continue
			}
			why = "its ticket ran out of deliveries (not delivered to a waiting fetch)"
		default:
			continue
		}
		var t wire.Ticket
		if err := json.Unmarshal(raw.Data, &t); err != nil {
			b.log.Error().Err(err).Uint64("seq", seq).Msg("remove an undecodable dead ticket")
			b.removeTicket(ctx, seq)
			continue
		}
		b.log.Warn().Str("job", t.JobID).Str("user", t.User).Uint64("seq", seq).Uint64("ack_floor", pt.AckFloor).
			Str("why", why).Msg("a ticket ran out of deliveries without an advisory")
		b.settleDeadTicket(ctx, t, seq, why)
	}
	b.state.suspects = suspects
	if unknown && !b.state.scanning {
		b.state.scanning = true
		b.wg.Add(1)
		go b.scanTickets(ctx)
	}
}

// poolTickets is what a pool's DISPATCH consumer says about its tickets.
type poolTickets struct {
	pool string
	ok   bool
	// AckFloor is the stream sequence up to which the consumer has
	// settled every ticket (acknowledged, or given up when no older
	// delivery was pending then); Delivered the highest it delivered.
	AckFloor, Delivered uint64
	// Waiting counts agents' fetches the server holds for lack of a
	// ticket; NotDelivered and AckPending the tickets it still means to
	// deliver and those out at agents or due again.
	Waiting                  int
	NotDelivered, AckPending uint64
	// dead is how many of the pool's tickets are neither (-1: not read
	// yet).
	dead int64
}

func (b *Broker) readPoolTickets(ctx context.Context, pool string) *poolTickets {
	pt := &poolTickets{pool: pool, dead: -1}
	c, err := b.res.Dispatch.Consumer(ctx, wire.DispatchConsumer(pool))
	if err != nil {
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			b.log.Warn().Err(err).Str("pool", pool).Msg("read the pool's consumer; will retry")
		}
		return pt
	}
	ci := c.CachedInfo()
	pt.ok = true
	pt.AckFloor, pt.Delivered = ci.AckFloor.Stream, ci.Delivered.Stream
	pt.Waiting, pt.NotDelivered, pt.AckPending = ci.NumWaiting, ci.NumPending, uint64(ci.NumAckPending)
	return pt
}

// deadTickets counts the pool's tickets in DISPATCH that its consumer
// neither means to deliver nor waits an acknowledgement for: the dead
// ones. The stream is read after the consumer, and the core publishes
// nothing meanwhile, so an acknowledgement in between can only make the
// count smaller. 0 when it cannot be read.
func (b *Broker) deadTickets(ctx context.Context, pt *poolTickets) int64 {
	if pt.dead >= 0 {
		return pt.dead
	}
	pt.dead = 0
	subject := wire.DispatchSubject(pt.pool)
	info, err := b.res.Dispatch.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		b.log.Warn().Err(err).Str("pool", pt.pool).Msg("count the pool's tickets; will retry")
		return 0
	}
	if n := int64(info.State.Subjects[subject]) - int64(pt.NotDelivered) - int64(pt.AckPending); n > 0 {
		pt.dead = n
	}
	return pt.dead
}

// scanTickets reads every ticket in DISPATCH (off the core) and then, on
// the core, notes where the waiting jobs' tickets lie and releases a new
// one for each job whose ticket is not there.
func (b *Broker) scanTickets(ctx context.Context) {
	defer b.wg.Done()
	found := map[string]wire.Ticket{} // JOBS key → its newest ticket in the stream
	seqs := map[string]uint64{}
	scanned := true
	info, err := b.res.Dispatch.Info(ctx)
	if err != nil {
		b.log.Warn().Err(err).Msg("scan DISPATCH; will retry")
		scanned = false
	} else if info.State.Msgs > 0 {
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && ctx.Err() == nil; seq++ {
			raw, err := b.res.Dispatch.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				b.log.Warn().Err(err).Uint64("seq", seq).Msg("scan DISPATCH; will retry")
				scanned = false
				break
			}
			var t wire.Ticket
			if json.Unmarshal(raw.Data, &t) != nil {
				continue
			}
			key := wire.JobKey(t.User, t.JobID)
			if prev, ok := found[key]; !ok || t.Release >= prev.Release {
				found[key], seqs[key] = t, seq
			}
		}
	}
	_ = b.do(ctx, func() {
		b.state.scanning = false
		if !scanned {
			return
		}
		for key, e := range b.state.jobs {
			if e.ticketSeq != 0 || !occupiesSlot(e.rec.State) {
				continue // released since the scan began, or not out
			}
			if t, ok := found[key]; ok && t.Release >= e.rec.Releases {
				e.ticketSeq = seqs[key]
				continue
			}
			if held(e) {
				// The holder has the ticket, or acknowledged it.
				if b.notHeldReason(e) != "" {
					b.settleOrphanWithoutTicket(ctx, e)
				}
				continue
			}
			if err := b.rerelease(ctx, e, "no ticket for it in DISPATCH"); err != nil {
				b.log.Error().Err(err).Str("job", e.rec.ID).Msg("release a lost ticket again")
			}
		}
	})
}
