package agent

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// slot is one GPU and its ComfyUI. It holds at most one ticket at a time.
type slot struct {
	a     *Agent
	ep    Endpoint
	log   zerolog.Logger
	comfy *comfyclient.Client

	// ackWait is the pool consumer's AckWait: the lease to keep extending.
	ackWait time.Duration

	// healthy counts transitions to healthy (0: never healthy yet).
	healthy atomic.Uint64

	mu    sync.Mutex
	state wire.SlotState
	job   string
	user  string
	vram  [2]int64 // total, free
	// staged remembers the inputs this slot's ComfyUI has, by content.
	staged map[string]bool
}

func newSlot(a *Agent, ep Endpoint) *slot {
	return &slot{
		a:      a,
		ep:     ep,
		log:    a.log.With().Str("slot", ep.Slot).Logger(),
		comfy:  comfyclient.New(ep.URL, nil),
		state:  wire.SlotStarting,
		staged: map[string]bool{},
	}
}

func (s *slot) status() wire.SlotStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return wire.SlotStatus{
		ID: s.ep.Slot, GPU: s.ep.GPU, State: s.state, JobID: s.job, User: s.user,
		VRAMTotal: s.vram[0], VRAMFree: s.vram[1],
	}
}

func (s *slot) setState(st wire.SlotState, job, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state, s.job, s.user = st, job, user
}

// run is the slot's loop: wait for a healthy ComfyUI, pull one ticket,
// run it, repeat.
func (s *slot) run(ctx context.Context) {
	defer s.a.wg.Done()
	var cons jetstream.Consumer
	for ctx.Err() == nil {
		if !s.awaitHealthy(ctx) {
			return
		}
		if cons == nil {
			c, err := s.a.js.Consumer(ctx, wire.StreamDispatch, wire.DispatchConsumer(s.a.cfg.Pool))
			if err != nil {
				// The broker creates the pool's consumer after our first
				// heartbeat.
				s.log.Debug().Err(err).Msg("pool consumer not there yet")
				sleep(ctx, time.Second)
				continue
			}
			cons = c
			s.ackWait = c.CachedInfo().Config.AckWait
		}
		// The pull is bound to ctx so that stopping the agent does not
		// wait out FetchWait.
		fctx, cancel := context.WithTimeout(ctx, s.a.cfg.FetchWait)
		batch, err := cons.Fetch(1, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			if ctx.Err() == nil {
				s.log.Warn().Err(err).Msg("fetch ticket")
				sleep(ctx, time.Second)
			}
			continue
		}
		for msg := range batch.Messages() {
			s.handleTicket(ctx, msg)
		}
		cancel()
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			s.log.Debug().Err(err).Msg("fetch ended")
			if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
				cons = nil
			}
		}
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
			s.mu.Unlock()
			if becameHealthy {
				s.healthy.Add(1)
				s.log.Info().Str("comfyui", s.ep.URL).Msg("ComfyUI healthy")
			}
			return true
		}
		if !wasDown {
			s.log.Warn().Err(err).Str("comfyui", s.ep.URL).Msg("ComfyUI not answering; waiting")
			wasDown = true
			s.mu.Lock()
			if s.state != wire.SlotStarting {
				s.state = wire.SlotDown
			}
			s.mu.Unlock()
		}
		if !sleep(ctx, 500*time.Millisecond) {
			return false
		}
	}
}

// handleTicket claims the ticket's job and runs it.
func (s *slot) handleTicket(ctx context.Context, msg jetstream.Msg) {
	var t wire.Ticket
	if err := json.Unmarshal(msg.Data(), &t); err != nil {
		s.log.Error().Err(err).Msg("undecodable ticket; terminating it")
		_ = msg.TermWithReason("undecodable ticket")
		return
	}
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.NakWithDelay(s.a.cfg.RetryDelay)
		return
	}
	reply, err := s.claim(ctx, t, meta.NumDelivered)
	if err != nil {
		s.log.Warn().Err(err).Str("job", t.JobID).Msg("claim failed; ticket goes back")
		_ = msg.NakWithDelay(s.a.cfg.RetryDelay)
		return
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
			return
		}
		s.setState(wire.SlotBusy, reply.Job.ID, reply.Job.User)
		r := &run{s: s, job: *reply.Job, attempt: reply.Attempt, ticket: msg}
		r.execute(ctx)
		s.setState(wire.SlotIdle, "", "")
	default:
		_ = msg.NakWithDelay(s.a.cfg.RetryDelay)
	}
}

func (s *slot) claim(ctx context.Context, t wire.Ticket, delivery uint64) (wire.ClaimReply, error) {
	var reply wire.ClaimReply
	data, _ := json.Marshal(wire.ClaimRequest{
		JobID: t.JobID, User: t.User, Agent: s.a.cfg.ID, Slot: s.ep.Slot, Boot: s.a.boot, Delivery: delivery,
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

// sleep waits d or until ctx is done; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
