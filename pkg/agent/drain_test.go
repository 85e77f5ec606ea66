package agent_test

import (
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// A ctl drain with a short deadline releases the running jobs back to the
// queue; nothing runs while drained; undrain runs them to the end, each
// exactly once.
func TestControlDrainReleasesAndUndrainResumes(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 2, stepDelay: slowSteps})
	var ids []string
	for range 4 {
		ids = append(ids, b.submit(t, "user001", 40)) // ~1 s each
	}
	// Both slots run a job.
	started := map[string]bool{}
	b.signals.Attempt.WaitFor(t, "two jobs started", func(s agent.AttemptSignal) bool {
		if s.Step == agent.StepStarted {
			started[s.JobID] = true
		}
		return len(started) == 2
	})

	reply := b.control(t, wire.ControlRequest{Op: wire.CtlDrain, Deadline: 200 * time.Millisecond})
	require.True(t, reply.Done)
	require.True(t, b.agent.Draining())
	require.False(t, b.control(t, wire.ControlRequest{Op: wire.CtlDrain}).Done, "already draining")
	require.Equal(t, 2, b.signals.DrainDeadline.WaitOrTimeout(t), "the deadline released both running jobs")
	require.NoError(t, b.agent.WaitIdle(t.Context()))
	for _, id := range ids {
		n, rec := b.rec.finals(id)
		require.Zero(t, n, "job %s ended while draining (%s)", id, rec.State)
	}
	require.True(t, b.control(t, wire.ControlRequest{Op: wire.CtlUndrain}).Done)
	recs := b.rec.await(t, ids)
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
	b := setup(t, opts{gpus: 1, stepDelay: slowSteps})
	running := b.submit(t, "user001", 100) // ~2 s
	b.awaitStep(t, running, agent.StepStarted)
	next := b.submit(t, "user002", 100)
	// Wait until the slot holds the next job prefetched.
	require.True(t, b.awaitStep(t, next, agent.StepClaimed).Prefetched)
	// Through the broker, which sends ctl.agent.<agent> interrupt: the
	// prefetched job is cancelled and dropped, the running one
	// interrupted in ComfyUI.
	admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
	b.api(t, wire.OpCancel, wire.CancelRequest{Caller: admin, User: "user002", JobIDs: []string{next}})
	b.api(t, wire.OpInterrupt, wire.InterruptRequest{Caller: admin, User: "user001", JobID: running})
	recs := b.rec.await(t, []string{running, next})
	b.awaitQuiet(t)
	b.requireOnce(t, map[string]wire.JobRecord{running: recs[running]}, wire.StateInterrupted)
	b.requireOnce(t, map[string]wire.JobRecord{next: recs[next]}, wire.StateCancelled)
	require.Equal(t, 1, recs[next].Attempt, "the prefetched job never ran again")
	require.False(t, b.control(t, wire.ControlRequest{Op: wire.CtlInterrupt, JobID: "nope"}).Done)
	b.requireSlotsUp(t)
}
