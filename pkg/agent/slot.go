package agent

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/agent/gpu"
	"github.com/atelier-run/atelier/pkg/agent/runtime"
	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// slot is one GPU and its ComfyUI. It runs one job at a time and, while
// it runs, holds at most one more: the next job, claimed and staged
// (prefetched), which starts the moment ComfyUI is done with the current
// one.
type slot struct {
	a     *Agent
	ep    runtime.Endpoint
	log   zerolog.Logger
	comfy *comfyclient.Client

	// ackWait is the pool consumer's AckWait (the lease to keep
	// extending), maxDeliver its MaxDeliver (0: unlimited).
	ackWait    time.Duration
	maxDeliver int
	cons       atomic.Pointer[jetstream.Consumer]

	// healthy counts transitions to healthy (0: never healthy yet): the
	// generation of the slot's ComfyUI.
	healthy atomic.Uint64

	mu    sync.Mutex
	state wire.SlotState
	vram  [2]int64 // total, free (from ComfyUI)
	gpu   *gpu.GPU // last GPUStats reading, if any
	// cur is the run ComfyUI executes; pending the prefetched next one.
	cur, pending *run
	fetching     bool
	// staged remembers the inputs this slot's ComfyUI has, by content.
	staged map[string]bool
	// emptyWarned: the slot has logged that its outputs cannot be
	// emptied (cannotEmpty).
	emptyWarned atomic.Bool

	wake chan struct{} // a fetch ended
}

func newSlot(a *Agent, ep runtime.Endpoint) *slot {
	return &slot{
		a:      a,
		ep:     ep,
		log:    a.log.With().Str("slot", ep.Slot).Logger(),
		comfy:  comfyclient.New(ep.URL, nil),
		state:  wire.SlotStarting,
		staged: map[string]bool{},
		wake:   make(chan struct{}, 1),
	}
}

func (s *slot) status() wire.SlotStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := wire.SlotStatus{ID: s.ep.Slot, GPU: s.ep.GPU, State: s.state, VRAMTotal: s.vram[0], VRAMFree: s.vram[1]}
	if s.cur != nil {
		st.JobID, st.User = s.cur.job.ID, s.cur.job.User
		if st.State == wire.SlotIdle {
			st.State = wire.SlotBusy
		}
	}
	if g := s.gpu; g != nil {
		if g.Name != "" {
			st.GPU = g.Name
		}
		st.VRAMTotal, st.VRAMFree, st.Utilization = g.MemoryTotal, g.MemoryTotal-g.MemoryUsed, g.Utilization
	}
	return st
}

// exited is the channel closed when the slot's current ComfyUI exits
// (nil when the runtime cannot tell).
func (s *slot) exited() <-chan struct{} {
	if sup, ok := s.a.cfg.Runtime.(runtime.Supervisor); ok {
		return sup.Exited(s.ep.Slot)
	}
	return nil
}

// restart asks the runtime for a fresh ComfyUI (a hung or out-of-memory
// one). The slot counts as down until the new one answers.
func (s *slot) restart(ctx context.Context, why string) {
	s.setState(wire.SlotDown)
	sup, ok := s.a.cfg.Runtime.(runtime.Supervisor)
	if !ok {
		s.log.Warn().Str("why", why).Msg("ComfyUI needs a restart, which this runtime cannot do")
		return
	}
	s.log.Warn().Str("why", why).Msg("restarting ComfyUI")
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := sup.Restart(rctx, s.ep.Slot); err != nil {
		s.log.Error().Err(err).Msg("restart ComfyUI")
	}
}

// run is the slot's loop: wait for a healthy ComfyUI, take the
// prefetched job or fetch one, run it while fetching the next, repeat.
func (s *slot) run(ctx context.Context) {
	defer s.a.wg.Done()
	defer s.dropPending("the agent stopped", false)
	for ctx.Err() == nil {
		// Poll ComfyUI's health only when it is not known to be up: a
		// request between two jobs would be idle GPU time.
		if s.needsHealthCheck() && !s.awaitHealthy(ctx) {
			return
		}
		if s.a.Draining() {
			s.dropPending("the agent is draining", false)
			select {
			case <-ctx.Done():
				return
			case <-s.a.changed():
			}
			continue
		}
		if !s.ensureConsumer(ctx) {
			continue
		}
		r := s.takePending()
		if r != nil && s.a.Draining() {
			// A drain began since the check above: the prefetched job
			// goes back, as Drain promises.
			r.dropBeforeStart(context.Background(), "the agent is draining", false)
			continue
		}
		if r == nil {
			s.startFetch(ctx, false)
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			case <-s.a.changed():
			}
			continue
		}
		s.execute(ctx, r)
	}
}

// execute starts r and returns once ComfyUI is done with it (r may still
// be shipping outputs and reporting). Meanwhile the next job is fetched.
func (s *slot) execute(ctx context.Context, r *run) {
	s.setCur(r, nil)
	s.a.wg.Add(1)
	s.a.active.Add(1)
	go func() {
		defer s.a.wg.Done()
		defer s.a.active.Add(-1)
		r.execute(ctx)
		s.setCur(nil, r)
	}()
	s.prefetch(ctx)
	for {
		select {
		case <-r.gpuFree:
			s.setCur(nil, r)
			return
		case <-ctx.Done():
			s.setCur(nil, r)
			return
		case <-s.wake:
			// A pull ended. One that ran out empty (FetchWait) is
			// followed by another while the GPU is busy: a job queued
			// later in this run still waits in ComfyUI's queue behind it.
			s.prefetch(ctx)
		}
	}
}

// prefetch pulls the next job while one runs, unless prefetch is off, the
// agent drains, a pull is under way or a job is already prefetched.
func (s *slot) prefetch(ctx context.Context) {
	if s.a.cfg.DisablePrefetch || s.a.Draining() || s.cons.Load() == nil {
		return
	}
	s.startFetch(ctx, true)
}

func (s *slot) ensureConsumer(ctx context.Context) bool {
	if s.cons.Load() != nil {
		return true
	}
	c, err := s.a.js.Consumer(ctx, wire.StreamDispatch, wire.DispatchConsumer(s.a.cfg.Pool))
	if err != nil {
		// The broker creates the pool's consumer after our first
		// heartbeat.
		s.log.Debug().Err(err).Msg("pool consumer not there yet")
		backoff.Sleep(ctx, time.Second)
		return false
	}
	cfg := c.CachedInfo().Config
	s.ackWait, s.maxDeliver = cfg.AckWait, cfg.MaxDeliver
	s.cons.Store(&c)
	return true
}

func (s *slot) takePending() *run {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.pending
	s.pending = nil
	return r
}

// dropPending releases the prefetched job, if any, back to the queue.
func (s *slot) dropPending(reason string, delay bool) {
	if r := s.takePending(); r != nil {
		r.dropBeforeStart(context.Background(), reason, delay)
	}
}

// startFetch pulls one ticket in the background (unless a pull is under
// way), claims and stages its job and leaves it in s.pending.
func (s *slot) startFetch(ctx context.Context, prefetch bool) {
	s.mu.Lock()
	if s.fetching || s.pending != nil {
		s.mu.Unlock()
		return
	}
	s.fetching = true
	s.mu.Unlock()
	s.a.wg.Add(1)
	go func() {
		defer s.a.wg.Done()
		r := s.fetch(ctx, prefetch)
		s.mu.Lock()
		s.fetching = false
		if r != nil && (s.a.Draining() || ctx.Err() != nil) {
			s.mu.Unlock()
			r.dropBeforeStart(context.Background(), "the agent is draining", false)
		} else {
			cur := s.cur
			if r != nil {
				s.pending = r
			}
			s.mu.Unlock()
			if r != nil && prefetch {
				// Into ComfyUI's own queue behind the running prompt:
				// ComfyUI starts it the instant that one ends.
				s.a.wg.Add(1)
				go func() {
					defer s.a.wg.Done()
					r.queueAhead(ctx, cur)
				}()
			}
		}
		s.a.signals.Fetch.Signal(fetchSignal{Slot: s.ep.Slot, Prefetch: prefetch, Got: r != nil})
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}()
}

// fetch pulls one ticket and turns it into a claimed, staged run (nil
// when there was none, or it was skipped or went back).
func (s *slot) fetch(ctx context.Context, prefetch bool) *run {
	cons := s.cons.Load()
	if cons == nil {
		return nil
	}
	// A drain does not cancel a pull under way: a ticket the server is
	// sending as the pull is cancelled is lost to us and comes back only
	// after AckWait (a minute of a participant waiting). The pull runs
	// out on its own (FetchWait), and a ticket it brings during a drain
	// is handed back at once, for another agent. (Stop cancels it; Run
	// drains first and waits for the pulls to end.)
	fctx, cancel := context.WithTimeout(ctx, s.a.cfg.FetchWait)
	defer cancel()
	batch, err := (*cons).Fetch(1, jetstream.FetchContext(fctx))
	if err != nil {
		if fctx.Err() == nil {
			s.log.Warn().Err(err).Msg("fetch ticket")
			backoff.Sleep(ctx, time.Second)
		}
		return nil
	}
	var r *run
	for msg := range batch.Messages() {
		if s.a.Draining() {
			_ = msg.Nak()
			continue
		}
		r = s.acquire(ctx, msg, prefetch)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && fctx.Err() == nil {
		s.log.Debug().Err(err).Msg("fetch ended")
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
			s.cons.Store(nil)
		}
	}
	return r
}

func (s *slot) needsHealthCheck() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state != wire.SlotIdle && s.state != wire.SlotBusy
}

// markDown records that ComfyUI is gone (exited, unreachable): the slot
// waits for its health before the next job.
func (s *slot) markDown() {
	s.setState(wire.SlotDown)
}

// setState records the slot's state; a change goes out in a heartbeat at
// once.
func (s *slot) setState(st wire.SlotState) {
	s.mu.Lock()
	changed := s.state != st
	s.state = st
	s.mu.Unlock()
	if changed {
		s.a.kickHeartbeat()
	}
}

// setCur makes r the job the slot's ComfyUI works on (nil: none, when
// cur is still want); the slot's busy or idle state goes out in a
// heartbeat at once.
func (s *slot) setCur(r, want *run) {
	s.mu.Lock()
	changed := false
	if want == nil || s.cur == want {
		changed = s.cur != r
		s.cur = r
	}
	s.mu.Unlock()
	if changed {
		s.a.kickHeartbeat()
	}
}

// awaitHealthy polls ComfyUI's /system_stats until it answers.
func (s *slot) awaitHealthy(ctx context.Context) bool {
	wasDown := false
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := s.comfy.SystemStats(cctx)
		cancel()
		if err == nil {
			s.mu.Lock()
			if len(st.Devices) > 0 {
				s.vram = [2]int64{st.Devices[0].VRAMTotal, st.Devices[0].VRAMFree}
			}
			becameHealthy := s.state == wire.SlotStarting || s.state == wire.SlotDown
			s.state = wire.SlotIdle
			if becameHealthy {
				// A new ComfyUI may have a new input folder: stage again.
				s.staged = map[string]bool{}
			}
			s.mu.Unlock()
			if becameHealthy {
				s.a.kickHeartbeat()
				s.healthy.Add(1)
				s.log.Info().Str("comfyui", s.ep.URL).Msg("ComfyUI healthy")
			}
			return true
		}
		if !wasDown {
			s.log.Warn().Err(err).Str("comfyui", s.ep.URL).Msg("ComfyUI not answering; waiting")
			wasDown = true
			s.mu.Lock()
			down := s.state != wire.SlotStarting && s.state != wire.SlotDown
			if down {
				s.state = wire.SlotDown
			}
			s.mu.Unlock()
			if down {
				s.a.kickHeartbeat()
			}
		}
		if !backoff.Sleep(ctx, 200*time.Millisecond) {
			return false
		}
	}
}

// acquire claims the ticket's job and prepares a run of it.
func (s *slot) acquire(ctx context.Context, msg jetstream.Msg, prefetch bool) *run {
	var t wire.Ticket
	if err := json.Unmarshal(msg.Data(), &t); err != nil {
		s.log.Error().Err(err).Msg("undecodable ticket; terminating it")
		_ = msg.TermWithReason("undecodable ticket")
		return nil
	}
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.NakWithDelay(s.a.cfg.RetryDelay)
		return nil
	}
	// JetStream delivers at least once: after a server restart a ticket
	// one of our slots holds can come again. The broker lets this agent
	// re-claim its own jobs (a claim reply lost to a restart must not
	// strand the job), so the agent itself must not claim what it holds,
	// from the claim until the run has reported and acknowledged.
	key := wire.HeldKey(t.User, t.JobID)
	h := s.a.enter(key)
	if h == nil {
		s.log.Info().Str("job", t.JobID).Msg("ticket for a job this agent already holds; deferring it")
		_ = msg.NakWithDelay(s.a.cfg.RetryDelay)
		return nil
	}
	held := false
	defer func() {
		if !held {
			s.a.leave(h)
		}
	}()
	reply, err := s.claimKeepingLease(ctx, msg, t, meta.NumDelivered, prefetch)
	if err != nil {
		s.log.Warn().Err(err).Str("job", t.JobID).Msg("claim failed; ticket goes back")
		_ = msg.NakWithDelay(s.a.cfg.RetryDelay)
		return nil
	}
	switch reply.Action {
	case wire.ClaimSkip:
		s.log.Debug().Str("job", t.JobID).Str("reason", reply.Reason).Msg("ticket skipped")
		_ = msg.Ack()
	case wire.ClaimLater:
		s.log.Debug().Str("job", t.JobID).Str("reason", reply.Reason).Msg("ticket deferred")
		_ = msg.NakWithDelay(s.a.cfg.RetryDelay)
	case wire.ClaimGo:
		if reply.Job == nil {
			_ = msg.NakWithDelay(s.a.cfg.RetryDelay)
			return nil
		}
		held = true
		return s.stage(ctx, h, *reply.Job, reply.Attempt, msg, meta.NumDelivered, prefetch)
	default:
		_ = msg.NakWithDelay(s.a.cfg.RetryDelay)
	}
	return nil
}

// stage makes a run of the job the broker let this slot claim (held as h)
// and prepares it; nil when it was interrupted meanwhile, or staging
// failed and the job went back.
func (s *slot) stage(ctx context.Context, h *held, job wire.Job, attempt int, msg jetstream.Msg, delivered uint64, prefetch bool) *run {
	r := newRun(ctx, s, job, attempt, msg, delivered, prefetch)
	r.onEnd = func() { s.a.leave(h) }
	// From here an interrupt finds the run (the broker records the job
	// running as it answers the claim); one that arrives while the job is
	// staged cuts the staging short.
	prepCtx, cancelPrep := context.WithCancel(ctx)
	defer cancelPrep()
	r.mu.Lock()
	r.preparing, r.cancelPrep = true, cancelPrep
	r.mu.Unlock()
	h.resolve(r)
	r.signal(stepClaimed)
	err := r.prepare(prepCtx)
	r.mu.Lock()
	r.preparing = false
	dropped := r.phase == phaseDropped
	r.mu.Unlock()
	if dropped {
		r.dropInterrupted(ctx)
		return nil
	}
	if err != nil {
		// Most likely ComfyUI itself (restarting, still starting): check
		// its health before the next job.
		s.markDown()
		r.retryOrFail(ctx, "preparing the job: "+err.Error(), nil, true)
		r.end()
		return nil
	}
	return r
}

// claimTries is how often a slot asks for a job whose claim got no answer.
const claimTries = 3

// claimKeepingLease claims the ticket's job, keeping the ticket's lease
// while it waits, and asks again when no answer comes (a broker killed
// after it recorded the claim, say). Handing the ticket back instead
// would use up one of its deliveries, and so would every redelivery while
// the claim is pending (this agent defers a ticket of a job it holds);
// once the deliveries are used up the ticket cannot come back. The broker
// answers the holder's repeated claim with "go".
func (s *slot) claimKeepingLease(ctx context.Context, ticket jetstream.Msg, t wire.Ticket, delivery uint64, prefetch bool) (wire.ClaimReply, error) {
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	go keepLease(lctx, ticket, s.ackWait, s.log)
	try := 0
	var reply wire.ClaimReply
	var lastErr error
	err := backoff.Retry(ctx, backoff.Policy{Min: s.a.cfg.RetryDelay, Max: s.a.cfg.RetryDelay}, claimTries, func(ctx context.Context) error {
		if try++; try > 1 {
			s.log.Warn().Err(lastErr).Str("job", t.JobID).Int("try", try-1).Msg("claim got no answer; asking again")
		}
		reply, lastErr = s.claim(ctx, t, delivery, prefetch)
		return lastErr
	})
	if err != nil {
		return wire.ClaimReply{}, err
	}
	return reply, nil
}

func (s *slot) claim(ctx context.Context, t wire.Ticket, delivery uint64, prefetch bool) (wire.ClaimReply, error) {
	var reply wire.ClaimReply
	data, _ := json.Marshal(wire.ClaimRequest{
		JobID: t.JobID, User: t.User, Agent: s.a.cfg.ID, Slot: s.ep.Slot, Boot: s.a.boot,
		Delivery: delivery, Prefetch: prefetch,
	})
	cctx, cancel := context.WithTimeout(ctx, s.a.cfg.ClaimTimeout)
	defer cancel()
	m, err := s.a.nc.RequestWithContext(cctx, wire.ClaimSubject(s.a.cfg.ID), data)
	if err != nil {
		return reply, err
	}
	err = json.Unmarshal(m.Data, &reply)
	return reply, err
}
