package agent_test

import (
	"slices"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// The heartbeat lists the jobs the agent holds while it holds them, and
// not after: the broker gives back a job the agent it recorded as holder
// does not list, once the job's ticket can no longer come back.
func TestHeartbeatListsHeldJobs(t *testing.T) {
	t.Parallel()
	b := setup(t, opts{gpus: 1, stepDelay: 20 * time.Millisecond})
	lastHeld := func() []string {
		b.rec.mu.Lock()
		defer b.rec.mu.Unlock()
		if n := len(b.rec.hbs); n > 0 {
			return b.rec.hbs[n-1].Held
		}
		return nil
	}
	id := b.submit(t, "user001", 25) // ~0.5 s
	require.Eventually(t, func() bool { return slices.Contains(lastHeld(), wire.HeldKey("user001", id)) },
		5*time.Second, 5*time.Millisecond, "the running job is listed")
	b.requireOnce(t, b.rec.await(t, []string{id}, 10*time.Second), wire.StateSucceeded)
	require.Eventually(t, func() bool { return len(lastHeld()) == 0 }, 5*time.Second, 5*time.Millisecond,
		"nothing is listed once the job has reported")
}
