package broker

import (
	"context"
	"slices"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
)

// Orphaned holds. When the broker answers a claim it records which agent
// (and which process of it, the boot) holds the job, and relies on the
// job's ticket to come back if that attempt dies: JetStream redelivers it
// after AckWait, and the next claim takes the job (the same agent's, or
// anyone's once the holder is gone). That fails when the ticket cannot
// come back, its last delivery having been handed back or left to time
// out while the record names a holder: the dead ticket then waited for a
// release that never came, and the job stayed "running" for ever.
//
// A claim whose answer was lost to a broker restart does exactly that: the
// broker recorded the claim and died before replying; the agent's slots
// deferred the ticket's redeliveries while the claim was pending (an agent
// does not claim what it is claiming) and handed the last one back once
// the claim timed out. An agent killed during a ticket's last delivery is
// the other case.
//
// So a dead ticket of a held job is settled once the holder is known not
// to hold the job: its agent is gone (no heartbeat for AgentTimeout, or
// another process of it heartbeats), or it heartbeats and does not list
// the job among those it holds (wire.Heartbeat.Held) in a heartbeat that
// arrived well after the claim. The finding must hold at two looks a
// TicketCheckInterval apart, so that a final report still on its way
// through REPORTS settles the job first. The job is then given back as if
// its agent had released it, and goes on like any dead ticket (released
// again, or failed when its attempts are used up).

// heldGrace is how long after a claim a heartbeat may still predate it:
// the agent publishes its heartbeats and claims on one connection, but the
// broker handles them on separate subscriptions.
const heldGrace = 2 * time.Second

// held reports whether the job's record names an attempt that holds it.
func held(e *jobEntry) bool {
	return e.rec.State == wire.StateRunning || e.rec.State == wire.StateDispatched && e.rec.Agent != ""
}

// notHeldReason says why the job's recorded holder does not hold it, or ""
// when it does or the broker cannot tell yet (on the core).
func (b *Broker) notHeldReason(e *jobEntry) string {
	if time.Since(b.state.since) < b.cfg.AgentTimeout {
		return "" // live agents may not have heartbeated since the start
	}
	rec := e.rec
	a := b.state.agents[rec.Agent]
	if a == nil || rec.AgentBoot != "" && a.hb.Boot != rec.AgentBoot || time.Since(a.lastSeen) > b.cfg.AgentTimeout {
		return "its agent " + rec.Agent + " is gone"
	}
	after := e.claimedAt
	if after.Before(b.state.since) {
		after = b.state.since
	}
	if a.lastSeen.Before(after.Add(heldGrace)) {
		return "" // no heartbeat yet that surely knows of the claim
	}
	if slices.Contains(a.hb.Held, wire.HeldKey(rec.User, rec.ID)) {
		return ""
	}
	return "its agent " + rec.Agent + " no longer holds it"
}

// dropOrphanedHold gives back a held job whose dead ticket was found at
// seq, if its holder has not held it at two looks in a row. It reports
// whether the hold was dropped; false with settled true means the job
// ended instead (it had been stopped).
func (b *Broker) dropOrphanedHold(ctx context.Context, e *jobEntry, seq uint64) (dropped, settled bool) {
	why := b.notHeldReason(e)
	if why == "" {
		e.orphanSeen = false
		return false, false
	}
	log := b.log.With().Str("job", e.rec.ID).Str("user", e.rec.User).Str("agent", e.rec.Agent).
		Str("slot", e.rec.Slot).Int("attempt", e.rec.Attempt).Uint64("seq", seq).Str("why", why).Logger()
	if !e.orphanSeen {
		e.orphanSeen = true
		log.Info().Msg("a held job's ticket is dead and its holder does not hold it; looking again before giving it back")
		return false, false
	}
	if e.stopReason != "" {
		// Stopped while running: it ends here, as a release would end it.
		if err := b.endJob(ctx, e, wire.StateInterrupted, e.stopReason+" (its attempt ended before the interrupt took)"); err != nil {
			log.Error().Err(err).Msg("end a stopped job whose holder is gone")
			return false, false
		}
		if seq != 0 {
			b.removeTicket(ctx, seq)
		}
		return false, true
	}
	err := b.transition(ctx, e, func(r *wire.JobRecord) {
		r.State = wire.StateDispatched
		r.Reason = why
		r.Agent, r.Slot, r.AgentBoot = "", "", ""
	})
	if err != nil {
		log.Error().Err(err).Msg("give back a job its holder does not hold")
		return false, false
	}
	e.orphanSeen = false
	log.Warn().Msg("gave back a held job whose holder does not hold it")
	return true, false
}

// reportsApplied reports whether the broker has applied every report in
// REPORTS: none waits for delivery or for the broker's acknowledgement
// (which it gives once a report is applied).
func (b *Broker) reportsApplied(ctx context.Context) bool {
	c, err := b.res.Reports.Consumer(ctx, wire.ConsumerReports)
	if err != nil {
		return false
	}
	ci := c.CachedInfo()
	return ci.NumPending == 0 && ci.NumAckPending == 0
}

// settleOrphanWithoutTicket handles a held job whose holder does not hold
// it and whose ticket is not in DISPATCH (on the core). The holder
// acknowledged the ticket, so it ended the attempt and reported, and the
// report is on its way; unless the report was lost (published to an
// embedded server killed before it wrote it). With no report left to
// apply, and the holder still not holding the job at the next look, the
// job is given back and released again.
func (b *Broker) settleOrphanWithoutTicket(ctx context.Context, e *jobEntry) {
	if !b.reportsApplied(ctx) {
		e.orphanSeen = false
		return
	}
	if dropped, _ := b.dropOrphanedHold(ctx, e, 0); dropped {
		if err := b.rerelease(ctx, e, "its holder acknowledged its ticket and no report of it is left"); err != nil {
			b.log.Error().Err(err).Str("job", e.rec.ID).Msg("release a job whose report was lost")
		}
	}
}
