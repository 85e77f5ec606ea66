package agent_test

import (
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// A ctl drain with a short deadline releases the running jobs back to the
// queue; nothing runs while drained; undrain runs them to the end, each
// exactly once.
func TestControlDrainReleasesAndUndrainResumes(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 2, stepDelay: 20 * time.Millisecond})
	var ids []string
	for range 4 {
		ids = append(ids, b.submit(t, "user001", 40)) // ~1 s each
	}
	require.Eventually(t, func() bool {
		n := 0
		for _, id := range ids {
			b.rec.mu.Lock()
			if r := b.rec.records[id]; r.State == wire.StateRunning {
				n++
			}
			b.rec.mu.Unlock()
		}
		return n >= 2
	}, 10*time.Second, 10*time.Millisecond)

	reply := b.control(t, wire.ControlRequest{Op: wire.CtlDrain, Deadline: 200 * time.Millisecond})
	require.True(t, reply.Done)
	require.True(t, b.agent.Draining())
	require.False(t, b.control(t, wire.ControlRequest{Op: wire.CtlDrain}).Done, "already draining")
	ctx := t.Context()
	require.NoError(t, b.agent.WaitIdle(ctx))
	for _, id := range ids {
		n, rec := b.rec.finals(id)
		require.Zero(t, n, "job %s ended while draining (%s)", id, rec.State)
	}
	require.True(t, b.control(t, wire.ControlRequest{Op: wire.CtlUndrain}).Done)
	recs := b.rec.await(t, ids, 30*time.Second)
	b.awaitQuiet(t)
	b.requireOnce(t, recs, wire.StateSucceeded)
	released := 0
	for _, r := range recs {
		if r.Attempt > 1 {
			released++
		}
	}
	require.GreaterOrEqual(t, released, 2, "the running jobs were released and ran again")
}

// ctl interrupt of a running job ends it as interrupted; of a prefetched
// one drops it without running.
func TestControlInterrupt(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1, stepDelay: 20 * time.Millisecond})
	running := b.submit(t, "user001", 100) // ~2 s
	require.Eventually(t, func() bool {
		b.rec.mu.Lock()
		defer b.rec.mu.Unlock()
		return b.rec.records[running].State == wire.StateRunning
	}, 10*time.Second, 10*time.Millisecond)
	next := b.submit(t, "user002", 100)
	// Wait until the slot holds the next job prefetched.
	require.Eventually(t, func() bool {
		b.rec.mu.Lock()
		defer b.rec.mu.Unlock()
		st := b.rec.records[next].State
		return st == wire.StateDispatched && b.rec.records[next].Attempt > 0 || st == wire.StateRunning
	}, 10*time.Second, 10*time.Millisecond)
	// Through the broker, which sends ctl.agent.<agent> interrupt: the
	// prefetched job is cancelled and dropped, the running one
	// interrupted in ComfyUI.
	admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
	b.api(t, wire.OpCancel, wire.CancelRequest{Caller: admin, User: "user002", JobIDs: []string{next}})
	b.api(t, wire.OpInterrupt, wire.InterruptRequest{Caller: admin, User: "user001", JobID: running})
	recs := b.rec.await(t, []string{running, next}, 20*time.Second)
	b.awaitQuiet(t)
	b.requireOnce(t, map[string]wire.JobRecord{running: recs[running]}, wire.StateInterrupted)
	b.requireOnce(t, map[string]wire.JobRecord{next: recs[next]}, wire.StateCancelled)
	require.Equal(t, 1, recs[next].Attempt, "the prefetched job never ran again")
	require.False(t, b.control(t, wire.ControlRequest{Op: wire.CtlInterrupt, JobID: "nope"}).Done)
	b.requireSlotsUp(t)
}
