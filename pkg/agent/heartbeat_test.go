package agent_test

import (
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/wire"
)

// A slot's change of state goes out in a heartbeat at once, not at the
// next tick: with heartbeats an hour apart, the agent still sends the slot
// busy while the job runs and idle right after it ended.
func TestHeartbeatOnSlotChange(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1, stepDelay: slowSteps, heartbeats: true, configure: func(c agent.Config) agent.Config {
		c.HeartbeatInterval = time.Hour
		return c
	}})
	slotIs := func(state wire.SlotState, job string) func(wire.Heartbeat) bool {
		return func(hb wire.Heartbeat) bool {
			return len(hb.Slots) == 1 && hb.Slots[0].State == state && hb.Slots[0].JobID == job
		}
	}
	// The slot became healthy after the first heartbeat: the change
	// went out.
	b.signals.Heartbeat.WaitFor(t, "the slot idle", slotIs(wire.SlotIdle, ""))

	id := b.submit(t, "user001", 25) // ~0.5 s
	b.signals.Heartbeat.WaitFor(t, "the slot busy with the job", slotIs(wire.SlotBusy, id))
	b.requireOnce(t, b.rec.await(t, []string{id}), wire.StateSucceeded)
	b.signals.Heartbeat.WaitFor(t, "the slot idle after the job", slotIs(wire.SlotIdle, ""))
}
