package agent_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// A prefetched job waits in ComfyUI's own queue behind the running one
// (so ComfyUI starts it the instant the running one ends); cancelling it
// takes it out of ComfyUI's queue: it never executes.
func TestPrefetchedJobQueuedAheadAndCancelled(t *testing.T) {
	t.Parallel()
	var executed atomic.Int32
	b := setup(t, opts{gpus: 1, stepDelay: slowSteps, simConfig: func(_ int, c *comfysim.Config) {
		c.OnExecute = func(string) { executed.Add(1) }
	}})
	comfy := comfyclient.New(b.runtime.Simulators()[0].URL(), nil)
	pending := func() int {
		_, p, err := comfy.Queue(t.Context())
		require.NoError(t, err)
		return len(p)
	}

	running := b.submit(t, "user001", 100) // ~2 s
	b.awaitStep(t, running, agent.StepStarted)
	next := b.submit(t, "user002", 100)
	// ComfyUI's queue, which no event of the agent's announces.
	testutil.Eventually(t, func() bool { return pending() == 1 },
		"the prefetched job is queued in ComfyUI behind the running one")

	admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
	b.api(t, wire.OpCancel, wire.CancelRequest{Caller: admin, User: "user002", JobIDs: []string{next}})
	testutil.Eventually(t, func() bool { return pending() == 0 },
		"cancelling the prefetched job takes it out of ComfyUI's queue")

	recs := b.rec.await(t, []string{running, next})
	b.awaitQuiet(t)
	b.requireOnce(t, map[string]wire.JobRecord{running: recs[running]}, wire.StateSucceeded)
	b.requireOnce(t, map[string]wire.JobRecord{next: recs[next]}, wire.StateCancelled)
	require.EqualValues(t, 1, executed.Load(), "only the running job executed in ComfyUI")
	b.requireSlotsUp(t)
}

// A job queued after the prefetch pull that began with the running job ran
// out empty is still prefetched: the slot pulls again while the GPU is
// busy, instead of leaving the job on the broker until the GPU is free.
func TestPrefetchPullsAgainWhileTheGPUIsBusy(t *testing.T) {
	t.Parallel()
	const fetchWait = 100 * time.Millisecond
	b := setup(t, opts{gpus: 1, stepDelay: slowSteps, fetches: true, configure: func(c agent.Config) agent.Config {
		c.FetchWait = fetchWait
		return c
	}})
	comfy := comfyclient.New(b.runtime.Simulators()[0].URL(), nil)
	pending := func() int {
		_, p, err := comfy.Queue(t.Context())
		require.NoError(t, err)
		return len(p)
	}

	running := b.submit(t, "user001", 1000) // ~20 s: it is cancelled below
	b.awaitStep(t, running, agent.StepStarted)
	// The pull that began as the job started ran out empty.
	b.signals.Fetch.WaitFor(t, "a prefetch pull that ran out empty", func(f agent.FetchSignal) bool {
		return f.Prefetch && !f.Got
	})
	next := b.submit(t, "user002", 5)
	require.True(t, b.awaitStep(t, next, agent.StepClaimed).Prefetched, "prefetched while the first one runs")
	testutil.Eventually(t, func() bool { return pending() == 1 },
		"the job queued later is prefetched into ComfyUI's queue behind the running one")
	b.rec.mu.Lock()
	require.Equal(t, wire.StateRunning, b.rec.records[running].State, "prefetched while the first one runs")
	b.rec.mu.Unlock()

	admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
	b.api(t, wire.OpCancel, wire.CancelRequest{Caller: admin, User: "user001", JobIDs: []string{running}})
	recs := b.rec.await(t, []string{running, next})
	b.awaitQuiet(t)
	b.requireOnce(t, map[string]wire.JobRecord{next: recs[next]}, wire.StateSucceeded)
	b.requireSlotsUp(t)
}
