package agent

import (
	"context"
	"github.com/atelier-run/atelier/internal/backoff"
	"time"
)

// Draining reports whether the agent takes no new jobs.
func (a *Agent) Draining() bool {
	a.dmu.Lock()
	defer a.dmu.Unlock()
	return a.draining
}

// changed returns a channel closed at the next drain or undrain.
func (a *Agent) changed() <-chan struct{} {
	a.dmu.Lock()
	defer a.dmu.Unlock()
	return a.changedCh
}

// Drain stops fetching, gives prefetched jobs back at once, and lets
// running jobs finish for up to deadline (0: Config.DrainTimeout); jobs
// still running then are interrupted and released back to the queue. It
// reports whether the agent was not draining already. The agent stays
// up, idle, until Undrain or Stop.
func (a *Agent) Drain(deadline time.Duration) bool {
	if deadline <= 0 {
		deadline = a.cfg.DrainTimeout
	}
	a.dmu.Lock()
	if a.draining {
		a.dmu.Unlock()
		return false
	}
	a.draining = true
	a.drainEpoch++
	epoch := a.drainEpoch
	close(a.changedCh)
	a.changedCh = make(chan struct{})
	a.dmu.Unlock()
	a.log.Info().Dur("deadline", deadline).Msg("draining: no new jobs")
	if a.nc != nil {
		a.sendHeartbeat()
	}
	for _, s := range a.slots {
		s.dropPending("the agent is draining", false)
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTimer(deadline)
		defer t.Stop()
		select {
		case <-t.C:
		case <-a.stopped:
			a.signals.DrainDeadline.Signal(-1)
			return
		}
		a.dmu.Lock()
		still := a.draining && a.drainEpoch == epoch
		a.dmu.Unlock()
		if !still {
			a.signals.DrainDeadline.Signal(-1)
			return
		}
		released := 0
		defer func() { a.signals.DrainDeadline.Signal(released) }()
		for _, s := range a.slots {
			s.mu.Lock()
			r := s.cur
			s.mu.Unlock()
			if r != nil {
				r.mu.Lock()
				cancel := r.cancel
				r.mu.Unlock()
				if cancel != nil {
					r.log.Warn().Msg("drain deadline passed; releasing the running job")
					cancel(errDrainDeadline)
					released++
				}
			}
		}
	}()
	return true
}

// Undrain resumes fetching. It reports whether the agent was draining.
func (a *Agent) Undrain() bool {
	a.dmu.Lock()
	if !a.draining {
		a.dmu.Unlock()
		return false
	}
	a.draining = false
	close(a.changedCh)
	a.changedCh = make(chan struct{})
	a.dmu.Unlock()
	a.log.Info().Msg("undrained: taking jobs again")
	if a.nc != nil {
		a.sendHeartbeat()
	}
	return true
}

// Idle reports whether no job is running, being finished or held, and no
// pull for a ticket is under way.
func (a *Agent) Idle() bool {
	if a.active.Load() > 0 {
		return false
	}
	for _, s := range a.slots {
		s.mu.Lock()
		// A pull under way counts: a ticket it brings back during a
		// drain is handed back at once (see slot.fetch).
		busy := s.cur != nil || s.pending != nil || s.fetching
		s.mu.Unlock()
		if busy {
			return false
		}
	}
	return true
}

// WaitIdle waits until Idle or ctx ends.
func (a *Agent) WaitIdle(ctx context.Context) error {
	for !a.Idle() {
		if !backoff.Sleep(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
	return nil
}
