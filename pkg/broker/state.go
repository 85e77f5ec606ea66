package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/pkg/scheduler"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// state is what the core goroutine owns: the unfinished jobs, the queues
// and the live agents. It is rebuilt from SUBMIT, JOBS and heartbeats after
// a restart.
type state struct {
	jobs   map[string]*jobEntry // JOBS key → unfinished job
	sched  *scheduler.Scheduler
	paused bool
	// picked is the job dispatch just took from the scheduler, which
	// already counts it as holding a slot.
	picked   string
	inflight map[string]int // pool → jobs dispatched or running
	agents   map[string]*agentEntry
	pools    map[string]bool // pools whose DISPATCH consumer exists
	catalogs map[string]wire.Catalog
	counts   map[wire.JobState]int // jobs that reached each final state since start
	// stopped are attempts the broker ended while their agent may still
	// run them (see stop.go).
	stopped map[string]*stoppedAttempt
	// scanning is set while scanTickets reads DISPATCH.
	scanning bool
	// suspects are waiting jobs whose delivered ticket (JOBS key →
	// sequence) the last checkTickets found possibly dead.
	suspects map[string]uint64
	// since is when this broker started: before AgentTimeout has passed,
	// not every live agent has heartbeated yet (see orphans.go).
	since time.Time
}

type jobEntry struct {
	rec wire.JobRecord
	rev uint64
	// stopReason is set when the instructor or the participant stopped
	// the running job and its agent was asked to interrupt it: until the
	// agent reports the end, a new claim or a release ends the job
	// instead of running it again. Kept in memory only.
	stopReason string
	// ticketSeq is where the job's latest ticket lies in DISPATCH (0:
	// not known, e.g. released before a restart).
	ticketSeq uint64
	// light means rec lacks the job's payload (see jobPayload): a queued
	// job's stays in its JOBS record and is read back when the job leaves
	// the queue.
	light bool
	// claimedAt is when this broker answered the claim that made the
	// job held (zero: before its start). orphanSeen is set when a look at
	// the job's dead ticket found that its holder does not hold it (see
	// orphans.go). Both in memory only.
	claimedAt  time.Time
	orphanSeen bool
}

// jobPayload is the part of a job's record that only the agent running it
// needs: the prompt and extra_data (a UI submission's extra_data carries
// the whole workflow, 20 KB and more), the client id, the output nodes and
// the input manifest. Queued jobs, which may be 100,000, keep it in JOBS
// only; jobs holding a slot (dispatched or running, as many as the pools
// have slots and prefetch) keep it in memory too, so a claim reads
// nothing. Its fields carry the record's own JSON names.
type jobPayload struct {
	ClientID         string           `json:"client_id,omitempty"`
	Prompt           json.RawMessage  `json:"prompt"`
	ExtraData        json.RawMessage  `json:"extra_data,omitempty"`
	OutputsToExecute []string         `json:"outputs_to_execute"`
	Inputs           []wire.InputFile `json:"inputs,omitempty"`
}

// lighten drops the payload of a job that waits in the queue.
func (e *jobEntry) lighten() {
	e.rec.ClientID, e.rec.Prompt, e.rec.ExtraData, e.rec.OutputsToExecute, e.rec.Inputs = "", nil, nil, nil, nil
	e.light = true
}

// loadPayload reads a light job's payload back from its JOBS record. A
// record at another revision than the broker's means another writer: the
// entry is reloaded and errConflict returned, as transition does.
func (b *Broker) loadPayload(ctx context.Context, e *jobEntry) error {
	if !e.light {
		return nil
	}
	kve, err := b.res.Jobs.Get(ctx, e.rec.Key())
	if err != nil {
		return fmt.Errorf("broker: read job %s: %w", e.rec.ID, err)
	}
	if kve.Revision() != e.rev {
		b.log.Error().Str("job", e.rec.ID).Msg("JOBS entry changed by another writer; reloading")
		_ = b.adopt(e, kve)
		return fmt.Errorf("%w: %s", errConflict, e.rec.ID)
	}
	var p jobPayload
	if err := json.Unmarshal(kve.Value(), &p); err != nil {
		return fmt.Errorf("broker: decode job %s: %w", e.rec.ID, err)
	}
	e.rec.ClientID, e.rec.Prompt, e.rec.ExtraData, e.rec.OutputsToExecute, e.rec.Inputs =
		p.ClientID, p.Prompt, p.ExtraData, p.OutputsToExecute, p.Inputs
	e.light = false
	return nil
}

func newState(cfg Config) *state {
	return &state{
		jobs:     map[string]*jobEntry{},
		sched:    scheduler.New(scheduler.Config{Policy: cfg.Policy, MaxRunningPerUser: cfg.MaxRunningPerUser}),
		inflight: map[string]int{},
		agents:   map[string]*agentEntry{},
		pools:    map[string]bool{},
		catalogs: map[string]wire.Catalog{},
		counts:   map[wire.JobState]int{},
		stopped:  map[string]*stoppedAttempt{},
	}
}

func occupiesSlot(s wire.JobState) bool { return s == wire.StateDispatched || s == wire.StateRunning }

// errConflict means JOBS changed under the broker: another writer exists.
var errConflict = errors.New("broker: job changed concurrently")

// transition applies mutate to a copy of the job's record and writes it to
// JOBS by compare-and-set. Only on success does the in-memory entry change,
// so memory never runs ahead of the durable state.
func (b *Broker) transition(ctx context.Context, e *jobEntry, mutate func(r *wire.JobRecord)) error {
	// The record is written whole: a queued job's payload is read back
	// first.
	if err := b.loadPayload(ctx, e); err != nil {
		return err
	}
	next := e.rec
	// Maps are shared by the copy: clone the one mutators touch.
	if e.rec.Outputs != nil {
		next.Outputs = make(map[string]json.RawMessage, len(e.rec.Outputs))
		for k, v := range e.rec.Outputs {
			next.Outputs[k] = v
		}
	}
	mutate(&next)
	if next.State != e.rec.State && !wire.CanTransition(e.rec.State, next.State) {
		return fmt.Errorf("broker: job %s: illegal transition %s → %s", next.ID, e.rec.State, next.State)
	}
	data, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("broker: encode job %s: %w", next.ID, err)
	}
	rev, err := b.res.Jobs.Update(ctx, next.Key(), data, e.rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			b.log.Error().Str("job", next.ID).Msg("JOBS entry changed by another writer; reloading")
			_ = b.reload(ctx, e)
			return fmt.Errorf("%w: %s", errConflict, next.ID)
		}
		return fmt.Errorf("broker: write job %s: %w", next.ID, err)
	}
	prev := e.rec.State
	e.rec, e.rev = next, rev
	b.accountState(e, prev)
	b.testSignals.jobChanged.Signal(jobChange{From: prev, Rec: e.rec})
	if e.rec.State == wire.StateQueued {
		e.lighten() // still waiting (bumped, say)
	}
	return nil
}

// accountState keeps the in-memory indexes in step with a job's new state.
func (b *Broker) accountState(e *jobEntry, prev wire.JobState) {
	st := b.state
	cur := e.rec.State
	if occupiesSlot(prev) && !occupiesSlot(cur) {
		st.inflight[e.rec.Pool]--
		st.sched.Release(e.rec.User)
	}
	if !occupiesSlot(prev) && occupiesSlot(cur) {
		st.inflight[e.rec.Pool]++
		if st.picked != e.rec.Key() {
			st.sched.Occupy(e.rec.User)
		}
	}
	if prev == wire.StateQueued && cur != wire.StateQueued {
		st.sched.Remove(e.rec.Pool, e.rec.User, e.rec.ID)
	}
	if cur == wire.StateQueued && prev != wire.StateQueued {
		st.sched.Push(schedItem(e.rec))
	}
	b.cfg.Observer.JobChanged(prev, e.rec)
	if cur.Final() {
		st.counts[cur]++
		delete(st.jobs, e.rec.Key())
		b.files.forget(e.rec)
	} else if cur == wire.StateRunning || (cur == wire.StateDispatched && e.rec.Agent != "") {
		// A slot that holds the job (running, or prefetched: it stages the
		// inputs before it starts) may move the user's files.
		b.files.allow(e.rec)
	} else if prev == wire.StateRunning || prev == wire.StateDispatched {
		b.files.forget(e.rec)
	}
}

// reload replaces the entry with what JOBS holds.
func (b *Broker) reload(ctx context.Context, e *jobEntry) error {
	kve, err := b.res.Jobs.Get(ctx, e.rec.Key())
	if err != nil {
		return fmt.Errorf("broker: reload job %s: %w", e.rec.ID, err)
	}
	return b.adopt(e, kve)
}

// adopt makes kve, the job's JOBS entry, the entry's record.
func (b *Broker) adopt(e *jobEntry, kve jetstream.KeyValueEntry) error {
	var rec wire.JobRecord
	if err := json.Unmarshal(kve.Value(), &rec); err != nil {
		return fmt.Errorf("broker: decode job %s: %w", e.rec.ID, err)
	}
	prev := e.rec.State
	e.rec, e.rev, e.light = rec, kve.Revision(), false
	b.accountState(e, prev)
	if e.rec.State == wire.StateQueued {
		e.lighten()
	}
	return nil
}

// finish removes a final job's submission from SUBMIT, which frees the
// user's backlog slot.
func (b *Broker) finish(ctx context.Context, rec wire.JobRecord) {
	if rec.SubmitSeq == 0 {
		return
	}
	if err := b.res.Submit.DeleteMsg(ctx, rec.SubmitSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		b.log.Warn().Err(err).Str("job", rec.ID).Uint64("seq", rec.SubmitSeq).Msg("remove finished job from SUBMIT")
	}
}

func now() time.Time { return time.Now().UTC() }

// schedItem is how the scheduler sees a queued job. Within a user, jobs
// follow ComfyUI's priority: the client's number if it gave one, else the
// submission counter, negated for "front".
func schedItem(r wire.JobRecord) scheduler.Item {
	it := scheduler.Item{JobID: r.ID, User: r.User, Pool: r.Pool, Seq: r.SubmitSeq, Priority: float64(r.SubmitSeq)}
	switch {
	case r.ClientNumber != nil:
		it.Priority = *r.ClientNumber
	case r.Front:
		it.Priority = -float64(r.SubmitSeq)
	}
	if r.Bumped {
		it.Bump = uint64(max(r.BumpedAt.UnixNano(), 1))
	}
	return it
}
