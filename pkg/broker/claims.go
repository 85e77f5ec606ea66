package broker

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// claimSubjectIs reports whether subject is agent's claim subject.
func claimSubjectIs(subject, agent string) bool {
	a, err := wire.ParseClaimSubject(subject)
	return err == nil && a == agent
}

// handleClaim answers "slot S of agent A takes job J".
func (b *Broker) handleClaim(ctx context.Context, m *nats.Msg) {
	var req wire.ClaimRequest
	reply := wire.ClaimReply{Action: wire.ClaimSkip}
	switch err := json.Unmarshal(m.Data, &req); {
	case err != nil:
		reply.Reason = "undecodable claim: " + err.Error()
	case !claimSubjectIs(m.Subject, req.Agent):
		// An agent may only claim for itself (its credentials only let it
		// publish on its own claim subject).
		reply.Reason = "claim subject does not match the agent"
	default:
		if err := b.do(ctx, func() { reply = b.claim(ctx, req) }); err != nil {
			return // stopping: no answer, the agent retries
		}
	}
	data, _ := json.Marshal(reply)
	if err := m.Respond(data); err != nil {
		b.log.Warn().Err(err).Str("job", req.JobID).Msg("answer claim")
	}
}

func (b *Broker) claim(ctx context.Context, req wire.ClaimRequest) wire.ClaimReply {
	key := wire.JobKey(req.User, req.JobID)
	e := b.state.jobs[key]
	if e == nil {
		// Not unfinished: it is final, expired, or never existed.
		_, err := b.res.Jobs.Get(ctx, key)
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return wire.ClaimReply{Action: wire.ClaimLater, Reason: "job state unavailable: " + err.Error()}
		}
		return wire.ClaimReply{Action: wire.ClaimSkip, Reason: "job is finished or unknown"}
	}
	rec := e.rec
	held := rec.State == wire.StateRunning || (rec.State == wire.StateDispatched && rec.Agent != "")
	if held {
		// A claim from the holder's own process means the earlier attempt
		// never started or was given up there (a claim reply lost to a
		// broker restart, say): the agent knows what its slots run and
		// only claims what none of them holds. A different, live agent
		// holding the job is another matter.
		if rec.Agent != req.Agent && b.agentAlive(rec.Agent, rec.AgentBoot) {
			// A live attempt holds the job. The ticket goes back with a
			// delay: it comes again if that attempt dies, and is skipped
			// once the job is final.
			return wire.ClaimReply{Action: wire.ClaimLater, Reason: "held by a live attempt on " + rec.Agent + "/" + rec.Slot}
		}
	}
	if e.stopReason != "" {
		// The job was stopped while running, and its attempt ended
		// before it reported: it must not run again.
		if err := b.endJob(ctx, e, wire.StateCancelled, e.stopReason+" (its attempt ended before the interrupt took)"); err != nil {
			b.log.Error().Err(err).Str("job", req.JobID).Msg("end a stopped job")
			return wire.ClaimReply{Action: wire.ClaimLater, Reason: "could not record the end"}
		}
		return wire.ClaimReply{Action: wire.ClaimSkip, Reason: "job was stopped"}
	}
	err := b.transition(ctx, e, func(r *wire.JobRecord) {
		// A prefetching slot holds the job (dispatched, with an agent)
		// until it reports the start; otherwise the job runs now.
		if req.Prefetch {
			r.State = wire.StateDispatched
		} else {
			r.State = wire.StateRunning
			r.StartedAt = now()
		}
		r.Attempt++
		r.Agent, r.Slot, r.AgentBoot = req.Agent, req.Slot, req.Boot
	})
	if err != nil {
		b.log.Error().Err(err).Str("job", req.JobID).Msg("claim")
		return wire.ClaimReply{Action: wire.ClaimLater, Reason: "could not record the claim"}
	}
	rec = e.rec
	e.claimedAt, e.orphanSeen = time.Now(), false
	b.log.Info().Str("job", rec.ID).Str("user", rec.User).Str("agent", req.Agent).Str("slot", req.Slot).
		Int("attempt", rec.Attempt).Msg("job claimed")
	return wire.ClaimReply{
		Action:  wire.ClaimGo,
		Attempt: rec.Attempt,
		Job: &wire.Job{
			ID: rec.ID, User: rec.User, Pool: rec.Pool,
			Prompt: rec.Prompt, ExtraData: rec.ExtraData, ClientID: rec.ClientID,
			OutputsToExecute: rec.OutputsToExecute, Inputs: rec.Inputs,
			SubmittedAt: rec.CreatedAt,
		},
	}
}
