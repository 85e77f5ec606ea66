package agent_test

import (
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// Each fault fires once, in the middle of a job; the agent recovers
// (restarting ComfyUI where needed) and every job still ends exactly once,
// succeeded, with no slot left dead.
func TestFaultsRecover(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault comfysim.Fault
	}{
		{"crash", comfysim.Fault{Kind: comfysim.FaultCrash, Node: "KSampler", After: 2, Count: 1}},
		{"hang", comfysim.Fault{Kind: comfysim.FaultHang, Node: "KSampler", After: 2, Count: 1}},
		{"oom", comfysim.Fault{Kind: comfysim.FaultOOM, Node: "KSampler", After: 2, Count: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, opts{gpus: 2, configure: func(c agent.Config) agent.Config {
				c.EventTimeout = 700 * time.Millisecond
				return c
			}})
			for _, sim := range b.runtime.Simulators() {
				sim.SetFault(tc.fault)
			}
			var ids []string
			for range 6 {
				ids = append(ids, b.submit(t, "user001", 5))
			}
			recs := b.rec.await(t, ids)
			// Exactly once also once nothing is in flight any more: a
			// late duplicate (a ticket redelivered after the first end)
			// would show only then.
			b.awaitQuiet(t)
			b.requireOnce(t, recs, wire.StateSucceeded)
			retried := 0
			for _, r := range recs {
				if r.Attempt > 1 {
					retried++
				}
			}
			require.GreaterOrEqual(t, retried, 1, "the fault should have cost at least one attempt")
			b.requireSlotsUp(t)
		})
	}
}

// A job that always runs out of memory is retried MaxDeliver times, then
// fails with a reason the participant sees; the slots stay usable.
func TestOOMExhaustsAttempts(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1, maxDeliver: 3})
	for _, sim := range b.runtime.Simulators() {
		sim.SetFault(comfysim.Fault{Kind: comfysim.FaultOOM, Node: "KSampler"})
	}
	id := b.submit(t, "user001", 3)
	recs := b.rec.await(t, []string{id})
	b.awaitQuiet(t)
	b.requireOnce(t, recs, wire.StateFailed)
	rec := recs[id]
	require.Equal(t, 3, rec.Attempt)
	require.Contains(t, rec.Reason, "gave up after 3 attempts")
	require.Contains(t, rec.Reason, "out of GPU memory")
	require.True(t, strings.Contains(string(rec.Error), "OutOfMemoryError"), "ComfyUI's error is kept: %s", rec.Error)

	// Clear the fault: the slot takes the next job.
	for _, sim := range b.runtime.Simulators() {
		sim.SetFault(comfysim.Fault{Kind: comfysim.FaultNone})
	}
	next := b.submit(t, "user001", 0)
	b.requireOnce(t, b.rec.await(t, []string{next}), wire.StateSucceeded)
}

// A ComfyUI that answers 503 while it starts holds its slot back, not the
// job: it runs once ComfyUI is up.
func TestSlowStart(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1})
	b.runtime.Simulators()[0].SetFault(comfysim.Fault{Kind: comfysim.FaultSlowStart, Delay: 1500 * time.Millisecond})
	require.NoError(t, b.runtime.Restart(t.Context(), "gpu0")) // the fault survives? no: slow_start is a start-up state
	b.runtime.Simulators()[0].SetFault(comfysim.Fault{Kind: comfysim.FaultSlowStart, Delay: 1500 * time.Millisecond})
	start := time.Now()
	id := b.submit(t, "user001", 0)
	recs := b.rec.await(t, []string{id})
	b.awaitQuiet(t)
	b.requireOnce(t, recs, wire.StateSucceeded)
	require.Greater(t, time.Since(start), time.Second, "the job waited for ComfyUI")
	b.requireSlotsUp(t)
}
