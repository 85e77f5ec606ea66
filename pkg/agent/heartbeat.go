package agent

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"time"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/wire"
)

// hbMinGap is the least time between two heartbeats a state change sends
// early. Each heartbeat costs the broker a KV write on its core goroutine;
// with many short jobs a heartbeat per change would be hundreds a second.
const hbMinGap = 100 * time.Millisecond

// heartbeatLoop sends a heartbeat every HeartbeatInterval, and soon
// (within hbMinGap of the last one) after a slot changed state.
func (a *Agent) heartbeatLoop(ctx context.Context) {
	defer a.wg.Done()
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		a.sendHeartbeat()
		last := time.Now()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.hbKick:
			if !backoff.Sleep(ctx, hbMinGap-time.Since(last)) {
				return
			}
			// Changes meanwhile are in the heartbeat about to go.
			select {
			case <-a.hbKick:
			default:
			}
		}
	}
}

// kickHeartbeat asks for a heartbeat soon: a slot changed state.
func (a *Agent) kickHeartbeat() {
	select {
	case a.hbKick <- struct{}{}:
	default:
	}
}

func (a *Agent) sendHeartbeat() {
	hb := wire.Heartbeat{
		Agent: a.cfg.ID, Pool: a.cfg.Pool, Version: Version, Boot: a.boot,
		StartedAt: a.startedAt, At: time.Now().UTC(),
		Draining: a.Draining(), ScratchBytes: a.scratchBytes.Load(),
		Held: a.heldKeys(),
	}
	for _, s := range a.slots {
		st := s.status()
		hb.Slots = append(hb.Slots, st)
		// One ticket beyond the running job per working slot: the one it
		// stages while the current job runs.
		if !a.cfg.DisablePrefetch && !hb.Draining && (st.State == wire.SlotIdle || st.State == wire.SlotBusy) {
			hb.Prefetch++
		}
	}
	data, _ := json.Marshal(hb)
	if err := a.nc.Publish(wire.HeartbeatSubject(a.cfg.ID), data); err != nil {
		a.log.Warn().Err(err).Msg("heartbeat")
		return
	}
	a.signals.Heartbeat.Signal(hb)
}

// gpuStatsLoop refreshes the slots' GPU memory and utilisation.
func (a *Agent) gpuStatsLoop(ctx context.Context) {
	defer a.wg.Done()
	if a.cfg.GPUStats == nil {
		return
	}
	for {
		gpus, err := a.cfg.GPUStats(ctx)
		if err != nil {
			a.log.Debug().Err(err).Msg("read GPU stats")
		}
		for _, s := range a.slots {
			for i := range gpus {
				g := gpus[i]
				if (s.ep.GPUUUID != "" && g.UUID == s.ep.GPUUUID) || (s.ep.GPUUUID == "" && s.ep.GPUIndex >= 0 && g.Index == s.ep.GPUIndex) {
					s.mu.Lock()
					s.gpu = &g
					s.mu.Unlock()
				}
			}
		}
		if !backoff.Sleep(ctx, a.cfg.GPUStatsInterval) {
			return
		}
	}
}

// scratchLoop measures the box's disk use for the heartbeat: the scratch
// folder (inputs, outputs, temp, the input cache and logs under it), and
// the input cache where it lives elsewhere.
func (a *Agent) scratchLoop(ctx context.Context) {
	defer a.wg.Done()
	cacheOutside := true
	if a.cfg.ScratchDir != "" {
		if rel, err := filepath.Rel(a.cfg.ScratchDir, a.inputs.dir); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			cacheOutside = false
		}
	}
	for {
		var n int64
		if a.cfg.ScratchDir != "" {
			used, err := (Scratch{Root: a.cfg.ScratchDir}).Usage(ctx)
			if err != nil && ctx.Err() == nil {
				a.log.Debug().Err(err).Msg("measure scratch")
			}
			n = used
		}
		if cacheOutside {
			n += a.inputs.Bytes()
		}
		a.scratchBytes.Store(n)
		if !backoff.Sleep(ctx, a.cfg.ScratchInterval) {
			return
		}
	}
}
