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
	b := setup(t, opts{gpus: 1, stepDelay: 20 * time.Millisecond, simConfig: func(_ int, c *comfysim.Config) {
		c.OnExecute = func(string) { executed.Add(1) }
	}})
	comfy := comfyclient.New(b.runtime.Simulators()[0].URL(), nil)
	pending := func() int {
		_, p, err := comfy.Queue(t.Context())
		require.NoError(t, err)
		return len(p)
	}

	running := b.submit(t, "user001", 100) // ~2 s
	require.Eventually(t, func() bool {
		b.rec.mu.Lock()
		defer b.rec.mu.Unlock()
		return b.rec.records[running].State == wire.StateRunning
	}, 10*time.Second, 10*time.Millisecond)
	next := b.submit(t, "user002", 100)
	require.Eventually(t, func() bool { return pending() == 1 }, 5*time.Second, 10*time.Millisecond,
		"the prefetched job is queued in ComfyUI behind the running one")

	admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
	b.api(t, wire.OpCancel, wire.CancelRequest{Caller: admin, User: "user002", JobIDs: []string{next}})
	require.Eventually(t, func() bool { return pending() == 0 }, 5*time.Second, 10*time.Millisecond,
		"cancelling the prefetched job takes it out of ComfyUI's queue")

	recs := b.rec.await(t, []string{running, next}, 20*time.Second)
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
	b := setup(t, opts{gpus: 1, stepDelay: 20 * time.Millisecond, configure: func(c agent.Config) agent.Config {
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
	require.Eventually(t, func() bool {
		b.rec.mu.Lock()
		defer b.rec.mu.Unlock()
		return b.rec.records[running].State == wire.StateRunning
	}, testutil.WaitTimeout(), 10*time.Millisecond)
	// The pull that began as the job started has run out empty by now.
	time.Sleep(5 * fetchWait)
	next := b.submit(t, "user002", 5)
	require.Eventually(t, func() bool { return pending() == 1 }, testutil.WaitTimeout(), 10*time.Millisecond,
		"the job queued later is prefetched into ComfyUI's queue behind the running one")
	b.rec.mu.Lock()
	require.Equal(t, wire.StateRunning, b.rec.records[running].State, "prefetched while the first one runs")
	b.rec.mu.Unlock()

	admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
	b.api(t, wire.OpCancel, wire.CancelRequest{Caller: admin, User: "user001", JobIDs: []string{running}})
	recs := b.rec.await(t, []string{running, next}, testutil.WaitTimeout())
	b.awaitQuiet(t)
	b.requireOnce(t, map[string]wire.JobRecord{next: recs[next]}, wire.StateSucceeded)
	b.requireSlotsUp(t)
}
