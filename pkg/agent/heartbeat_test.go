package agent_test

import (
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// A slot's change of state goes out in a heartbeat at once, not at the
// next tick: with a 10 s interval the broker still sees the slot busy
// while the job runs and idle right after it ended.
func TestHeartbeatOnSlotChange(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1, stepDelay: 20 * time.Millisecond, configure: func(c agent.Config) agent.Config {
		c.HeartbeatInterval = 10 * time.Second
		return c
	}})
	// lastSlot returns the slot of the latest heartbeat and when the
	// broker saw it.
	lastSlot := func() (wire.SlotStatus, int) {
		b.rec.mu.Lock()
		defer b.rec.mu.Unlock()
		n := len(b.rec.hbs)
		if n == 0 || len(b.rec.hbs[n-1].Slots) == 0 {
			return wire.SlotStatus{}, n
		}
		return b.rec.hbs[n-1].Slots[0], n
	}
	// The slot became healthy after the first heartbeat: idle by now.
	require.Eventually(t, func() bool { st, _ := lastSlot(); return st.State == wire.SlotIdle }, 2*time.Second, 5*time.Millisecond)

	id := b.submit(t, "user001", 25) // ~0.5 s
	require.Eventually(t, func() bool {
		st, _ := lastSlot()
		return st.State == wire.SlotBusy && st.JobID == id
	}, 2*time.Second, 5*time.Millisecond, "busy within the job, not at the next 10 s tick")
	b.requireOnce(t, b.rec.await(t, []string{id}, 10*time.Second), wire.StateSucceeded)
	end := time.Now()
	require.Eventually(t, func() bool {
		st, _ := lastSlot()
		return st.State == wire.SlotIdle && st.JobID == ""
	}, time.Second, 5*time.Millisecond, "idle right after the job ended")
	require.Less(t, time.Since(end), 500*time.Millisecond)
}
