package agent_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// The broker records a claimed job running as it answers the claim, while
// the slot still stages it (here: ComfyUI takes a minute to register the
// job's WebSocket). A cancel in that window reaches the agent, which drops the
// job: it ends interrupted, once, and never executes in ComfyUI.
func TestInterruptWhileStaging(t *testing.T) {
	t.Parallel()
	var executed atomic.Int32
	b := setup(t, opts{gpus: 1, simConfig: func(_ int, c *comfysim.Config) {
		c.WSRegisterDelay = time.Minute
		c.OnExecute = func(string) { executed.Add(1) }
	}})
	id := b.submit(t, "user001", 0)
	require.Eventually(t, func() bool {
		b.rec.mu.Lock()
		defer b.rec.mu.Unlock()
		return b.rec.records[id].State == wire.StateRunning
	}, 10*time.Second, 5*time.Millisecond)

	reply := b.control(t, wire.ControlRequest{Op: wire.CtlInterrupt, JobID: id, User: "user001"})
	require.True(t, reply.Done, "the agent holds the claimed job while it stages it")
	// Well before the minute is up: the interrupt cut the staging short.
	recs := b.rec.await(t, []string{id}, 20*time.Second)
	b.requireOnce(t, recs, wire.StateInterrupted)

	// Still once, and never run, when everything has settled (the ticket
	// came back and was skipped).
	b.awaitQuiet(t)
	b.requireOnce(t, recs, wire.StateInterrupted)
	require.Zero(t, executed.Load(), "the interrupted job never reached the GPU")

}

// A cancel through the broker's API in the same window: the job ends
// cancelled or interrupted (the broker's word), once, and never runs.
func TestCancelWhileStaging(t *testing.T) {
	t.Parallel()
	var executed atomic.Int32
	b := setup(t, opts{gpus: 1, simConfig: func(_ int, c *comfysim.Config) {
		c.WSRegisterDelay = time.Minute
		c.OnExecute = func(string) { executed.Add(1) }
	}})
	id := b.submit(t, "user001", 0)
	require.Eventually(t, func() bool {
		b.rec.mu.Lock()
		defer b.rec.mu.Unlock()
		return b.rec.records[id].State == wire.StateRunning
	}, 10*time.Second, 5*time.Millisecond)
	admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
	b.api(t, wire.OpCancel, wire.CancelRequest{Caller: admin, User: "user001", JobIDs: []string{id}})
	b.rec.await(t, []string{id}, 20*time.Second)
	b.awaitQuiet(t)
	n, rec := b.rec.finals(id)
	require.Equal(t, 1, n, "ended once")
	require.Contains(t, []wire.JobState{wire.StateInterrupted, wire.StateCancelled}, rec.State, "%s (%s)", rec.State, rec.Reason)
	require.Zero(t, executed.Load(), "the cancelled job never reached the GPU")
}
