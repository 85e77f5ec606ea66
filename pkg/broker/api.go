package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/atelier-run/atelier/pkg/brokerapi"
	"github.com/atelier-run/atelier/pkg/scheduler"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Broker API errors, answered as APIReply.Code: brokerapi's sentinels, so
// the code the client maps back is the one the broker chose.
var (
	ErrForbidden = brokerapi.ErrForbidden
	ErrNotFound  = brokerapi.ErrNotFound
	ErrInvalid   = brokerapi.ErrInvalid
)

func apiError(err error) wire.APIReply { return brokerapi.Reply(err) }

// subscribeAPI answers api.broker.<op> requests.
func (b *Broker) subscribeAPI(ctx context.Context) error {
	s, err := b.nc.QueueSubscribe(wire.BrokerAPISubject("*"), "atelier-broker", func(m *nats.Msg) {
		op, err := wire.ParseBrokerAPISubject(m.Subject)
		var reply any = apiError(fmt.Errorf("%w: %v", ErrInvalid, err))
		if err == nil {
			reply = b.Call(ctx, op, m.Data)
		}
		data, _ := json.Marshal(reply)
		if err := m.Respond(data); err != nil {
			b.log.Warn().Err(err).Str("op", op).Msg("answer API request")
		}
	})
	if err != nil {
		return fmt.Errorf("broker: subscribe API: %w", err)
	}
	b.subs = append(b.subs, s)
	return nil
}

// Call runs one broker API operation on a JSON request and returns the
// reply value. The NATS API and the HTTP admin API both go through it.
func (b *Broker) Call(ctx context.Context, op string, data []byte) any {
	decode := func(v any) error {
		if err := json.Unmarshal(data, v); err != nil {
			return fmt.Errorf("%w: request: %v", ErrInvalid, err)
		}
		return nil
	}
	switch op {
	case wire.OpCancel:
		var req wire.CancelRequest
		if err := decode(&req); err != nil {
			return wire.CancelReply{APIReply: apiError(err)}
		}
		return b.Cancel(ctx, req)
	case wire.OpInterrupt:
		var req wire.InterruptRequest
		if err := decode(&req); err != nil {
			return wire.CancelReply{APIReply: apiError(err)}
		}
		return b.Interrupt(ctx, req)
	case wire.OpForget:
		var req wire.ForgetRequest
		if err := decode(&req); err != nil {
			return wire.CancelReply{APIReply: apiError(err)}
		}
		return b.Forget(ctx, req)
	case wire.OpBump:
		var req wire.BumpRequest
		if err := decode(&req); err != nil {
			return apiError(err)
		}
		return apiError(b.Bump(ctx, req))
	case wire.OpPause, wire.OpResume:
		var req wire.PauseRequest
		if err := decode(&req); err != nil {
			return apiError(err)
		}
		return apiError(b.SetPaused(ctx, req.Caller, op == wire.OpPause))
	case wire.OpPolicy:
		var req wire.PolicyRequest
		if err := decode(&req); err != nil {
			return apiError(err)
		}
		return apiError(b.SetPolicy(ctx, req))
	case wire.OpDrain, wire.OpUndrain:
		var req wire.DrainRequest
		if err := decode(&req); err != nil {
			return apiError(err)
		}
		return apiError(b.Drain(ctx, req, op == wire.OpDrain))
	case wire.OpQueues:
		var req wire.QueuesRequest
		if err := decode(&req); err != nil {
			return wire.QueuesReply{APIReply: apiError(err)}
		}
		return b.Queues(ctx, req)
	}
	return apiError(fmt.Errorf("%w: unknown operation %q", ErrInvalid, op))
}

// mayActOn reports whether caller may act on user's jobs.
func mayActOn(c wire.Caller, user string) error {
	if c.Role.Privileged() || (c.User != "" && c.User == user) {
		return nil
	}
	return fmt.Errorf("%w: %s may not act on %s's jobs", ErrForbidden, c.User, user)
}

func privileged(c wire.Caller) error {
	if c.Role.Privileged() {
		return nil
	}
	return fmt.Errorf("%w: instructors only", ErrForbidden)
}

// findJob finds an unfinished job by id, within user if given.
func (b *Broker) findJob(user, id string) *jobEntry {
	if user != "" {
		return b.state.jobs[wire.JobKey(user, id)]
	}
	for _, e := range b.state.jobs {
		if e.rec.ID == id {
			return e
		}
	}
	return nil
}

// Cancel cancels jobs at any stage: queued and dispatched jobs end
// cancelled at once; running jobs (and jobs a slot holds prefetched) are
// interrupted on their agent and end interrupted when it reports, or
// cancelled at once if the agent is gone.
func (b *Broker) Cancel(ctx context.Context, req wire.CancelRequest) wire.CancelReply {
	if req.User == "" && !req.Caller.Role.Privileged() {
		req.User = req.Caller.User
	}
	if err := mayActOn(req.Caller, req.User); req.User != "" && err != nil {
		return wire.CancelReply{APIReply: apiError(err)}
	}
	if req.User == "" && req.AllPending {
		return wire.CancelReply{APIReply: apiError(fmt.Errorf("%w: all_pending needs a user", ErrInvalid))}
	}
	return b.stopJobs(ctx, "cancelled by "+callerName(req.Caller), func() (targets []*jobEntry, failure error) {
		if req.AllPending {
			for _, e := range b.state.jobs {
				if e.rec.User == req.User && (e.rec.State == wire.StateQueued || e.rec.State == wire.StateDispatched) {
					targets = append(targets, e)
				}
			}
		}
		for _, id := range req.JobIDs {
			if e := b.findJob(req.User, id); e != nil && !slices.Contains(targets, e) {
				targets = append(targets, e)
			}
		}
		return slices.DeleteFunc(targets, func(e *jobEntry) bool {
			if err := mayActOn(req.Caller, e.rec.User); err != nil {
				failure = err
				return true
			}
			return req.PendingOnly && e.rec.State == wire.StateRunning
		}), failure
	})
}

// control sends one command to an agent.
func (b *Broker) control(ctx context.Context, agent string, req wire.ControlRequest) (wire.ControlReply, error) {
	var reply wire.ControlReply
	data, _ := json.Marshal(req)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := b.nc.RequestWithContext(cctx, wire.ControlSubject(agent), data)
	if err != nil {
		return reply, fmt.Errorf("ctl %s to %s: %w", req.Op, agent, err)
	}
	err = json.Unmarshal(m.Data, &reply)
	return reply, err
}

// Interrupt interrupts a user's running job (or whatever of theirs runs).
func (b *Broker) Interrupt(ctx context.Context, req wire.InterruptRequest) wire.CancelReply {
	if err := mayActOn(req.Caller, req.User); err != nil {
		return wire.CancelReply{APIReply: apiError(err)}
	}
	return b.stopJobs(ctx, "interrupted by "+callerName(req.Caller), func() (targets []*jobEntry, _ error) {
		for _, e := range b.state.jobs {
			if e.rec.User == req.User && e.rec.State == wire.StateRunning && (req.JobID == "" || e.rec.ID == req.JobID) {
				targets = append(targets, e)
			}
		}
		return targets, nil
	})
}

// Forget deletes final jobs from the history.
func (b *Broker) Forget(ctx context.Context, req wire.ForgetRequest) wire.CancelReply {
	if err := mayActOn(req.Caller, req.User); err != nil {
		return wire.CancelReply{APIReply: apiError(err)}
	}
	if err := wire.ValidateToken("user", req.User); err != nil {
		return wire.CancelReply{APIReply: apiError(fmt.Errorf("%w: %v", ErrInvalid, err))}
	}
	ids := req.JobIDs
	if req.All {
		lister, err := b.res.Jobs.ListKeysFiltered(ctx, wire.UserJobKeys(req.User))
		if err != nil {
			return wire.CancelReply{APIReply: apiError(err)}
		}
		for k := range lister.Keys() {
			ids = append(ids, strings.TrimPrefix(k, req.User+"."))
		}
	}
	var affected []string
	var failure error
	err := b.do(ctx, func() {
		for _, id := range ids {
			if wire.ValidateToken("job", id) != nil {
				continue
			}
			key := wire.JobKey(req.User, id)
			if b.state.jobs[key] != nil {
				continue // unfinished jobs are not history yet
			}
			if err := b.res.Jobs.Delete(ctx, key); err != nil {
				if !errors.Is(err, jetstream.ErrKeyNotFound) {
					failure = err
				}
				continue
			}
			affected = append(affected, id)
		}
	})
	if err != nil {
		return wire.CancelReply{APIReply: apiError(err)}
	}
	return wire.CancelReply{APIReply: apiError(failure), Affected: affected}
}

// Bump moves a queued job ahead of every job that is not bumped.
func (b *Broker) Bump(ctx context.Context, req wire.BumpRequest) error {
	if err := privileged(req.Caller); err != nil {
		return err
	}
	var result error
	err := b.do(ctx, func() {
		e := b.findJob(req.User, req.JobID)
		if e == nil || e.rec.State != wire.StateQueued {
			result = fmt.Errorf("%w: no queued job %s", ErrNotFound, req.JobID)
			return
		}
		at := now()
		if err := b.transition(ctx, e, func(r *wire.JobRecord) { r.Bumped, r.BumpedAt = true, at }); err != nil {
			result = err
			return
		}
		b.state.sched.Bump(e.rec.Pool, e.rec.User, e.rec.ID, uint64(at.UnixNano()))
		b.log.Info().Str("job", e.rec.ID).Str("by", callerName(req.Caller)).Msg("job bumped")
	})
	return errors.Join(err, result)
}

// SetPaused pauses or resumes dispatch. Running jobs go on.
func (b *Broker) SetPaused(ctx context.Context, c wire.Caller, paused bool) error {
	if err := privileged(c); err != nil {
		return err
	}
	var result error
	err := b.do(ctx, func() {
		b.state.paused = paused
		result = b.saveSettings(ctx)
		b.log.Info().Bool("paused", paused).Str("by", callerName(c)).Msg("dispatch paused/resumed")
		b.dispatchAll(ctx)
	})
	return errors.Join(err, result)
}

// SetPolicy switches the scheduling policy.
func (b *Broker) SetPolicy(ctx context.Context, req wire.PolicyRequest) error {
	if err := privileged(req.Caller); err != nil {
		return err
	}
	p, err := scheduler.ParsePolicy(req.Policy)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var result error
	err = b.do(ctx, func() {
		b.state.sched.SetPolicy(p)
		result = b.saveSettings(ctx)
		b.log.Info().Str("policy", string(p)).Str("by", callerName(req.Caller)).Msg("policy switched")
	})
	return errors.Join(err, result)
}

// Drain tells an agent to stop (or resume) taking jobs.
func (b *Broker) Drain(ctx context.Context, req wire.DrainRequest, drain bool) error {
	if err := privileged(req.Caller); err != nil {
		return err
	}
	if err := wire.ValidateToken("agent", req.Agent); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	op := wire.CtlUndrain
	if drain {
		op = wire.CtlDrain
	}
	reply, err := b.control(ctx, req.Agent, wire.ControlRequest{Op: op, Deadline: req.Deadline})
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("%w: agent %s is not connected", ErrNotFound, req.Agent)
		}
		return err
	}
	if reply.Error != "" {
		return errors.New(reply.Error)
	}
	b.log.Info().Str("agent", req.Agent).Bool("drain", drain).Str("by", callerName(req.Caller)).Msg("agent drain changed")
	return nil
}

// Queues lists the unfinished jobs, queued ones with their position in
// their pool's dispatch order. Participants see their own jobs only.
func (b *Broker) Queues(ctx context.Context, req wire.QueuesRequest) wire.QueuesReply {
	var out wire.QueuesReply
	err := b.do(ctx, func() {
		out.Paused = b.state.paused
		out.Policy = string(b.state.sched.Policy())
		position := map[string]int{}
		for _, pool := range b.state.sched.Pools() {
			for i, it := range b.state.sched.Order(pool, 0) {
				position[wire.JobKey(it.User, it.JobID)] = i + 1
			}
		}
		for key, e := range b.state.jobs {
			r := e.rec
			if !req.Caller.Role.Privileged() && r.User != req.Caller.User {
				continue
			}
			out.Jobs = append(out.Jobs, wire.QueuedJob{
				ID: r.ID, User: r.User, Pool: r.Pool, State: r.State, Number: r.Number, Bumped: r.Bumped,
				Agent: r.Agent, Slot: r.Slot, CreatedAt: r.CreatedAt, Position: position[key],
			})
		}
		slices.SortFunc(out.Jobs, func(a, b wire.QueuedJob) int {
			if (a.Position == 0) != (b.Position == 0) { // running first
				if a.Position == 0 {
					return -1
				}
				return 1
			}
			if a.Position != b.Position {
				return a.Position - b.Position
			}
			return int(a.Number) - int(b.Number)
		})
	})
	if err != nil {
		out.APIReply = apiError(err)
	}
	return out
}

// settingsKey is the BROKER key of the persisted settings.
const settingsKey = "settings"

func (b *Broker) saveSettings(ctx context.Context) error {
	data, _ := json.Marshal(wire.BrokerSettings{Paused: b.state.paused, Policy: string(b.state.sched.Policy())})
	if _, err := b.res.Broker.Put(ctx, settingsKey, data); err != nil {
		return fmt.Errorf("save settings: %w", err)
	}
	return nil
}

// loadSettings restores pause and policy after a restart.
func (b *Broker) loadSettings(ctx context.Context) error {
	e, err := b.res.Broker.Get(ctx, settingsKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load settings: %w", err)
	}
	var s wire.BrokerSettings
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		return fmt.Errorf("decode settings: %w", err)
	}
	b.state.paused = s.Paused
	if p, err := scheduler.ParsePolicy(s.Policy); err == nil {
		b.state.sched.SetPolicy(p)
	}
	return nil
}
