package agent_test

import (
	"slices"
	"testing"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/wire"
)

// The heartbeat lists the jobs the agent holds while it holds them, and
// not after: the broker gives back a job the agent it recorded as holder
// does not list, once the job's ticket can no longer come back.
func TestHeartbeatListsHeldJobs(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1, stepDelay: slowSteps, heartbeats: true})
	id := b.submit(t, "user001", 25) // ~0.5 s
	b.signals.Heartbeat.WaitFor(t, "the running job listed", func(hb wire.Heartbeat) bool {
		return slices.Contains(hb.Held, wire.HeldKey("user001", id))
	})
	b.requireOnce(t, b.rec.await(t, []string{id}), wire.StateSucceeded)
	b.awaitStep(t, id, agent.StepEnded)
	b.signals.Heartbeat.WaitFor(t, "nothing listed once the job has reported", func(hb wire.Heartbeat) bool {
		return len(hb.Held) == 0
	})
}
