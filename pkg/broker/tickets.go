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
// ticket has vanished from DISPATCH.

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
	case e.rec.State == wire.StateRunning || e.rec.Agent != "":
		// A slot holds the job: if it ends, fine; if it gives the job
		// back, the job needs a ticket then.
		return false
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
// DISPATCH (on the core, every TicketCheckInterval). A ticket this broker
// released is looked up by its sequence. Tickets released before a
// restart are not known by sequence; an embedded server killed without a
// sync can also lose a ticket it had acknowledged while the job's record
// says dispatched. For those the stream is scanned once, off the core.
func (b *Broker) checkTickets(ctx context.Context) {
	unknown := false
	for _, e := range b.state.jobs {
		if e.rec.State != wire.StateDispatched || e.rec.Agent != "" {
			continue
		}
		if e.ticketSeq == 0 {
			unknown = true
			continue
		}
		_, err := b.res.Dispatch.GetMsg(ctx, e.ticketSeq)
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err := b.rerelease(ctx, e, "its ticket is no longer in DISPATCH"); err != nil {
			b.log.Error().Err(err).Str("job", e.rec.ID).Msg("release a vanished ticket again")
		}
	}
	if unknown && !b.state.scanning {
		b.state.scanning = true
		b.wg.Add(1)
		go b.scanTickets(ctx)
	}
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
			if e.rec.State != wire.StateDispatched || e.rec.Agent != "" || e.ticketSeq != 0 {
				continue // held, or released since the scan began
			}
			if t, ok := found[key]; ok && t.Release >= e.rec.Releases {
				e.ticketSeq = seqs[key]
				continue
			}
			if err := b.rerelease(ctx, e, "no ticket for it in DISPATCH"); err != nil {
				b.log.Error().Err(err).Str("job", e.rec.ID).Msg("release a lost ticket again")
			}
		}
	})
}
