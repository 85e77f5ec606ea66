package stack

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// Drain and undrain through the broker API reach the real agent: a
// draining agent takes no job (its heartbeat says so, the pool has no
// capacity), and once undrained it runs what waited. An agent that is not
// connected is a clear not-found.
func TestDrainThroughTheBrokerReachesTheAgent(t *testing.T) {
	t.Parallel()
	tb := setup(t, "user001")
	admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
	b := tb.stack.Broker
	heartbeat := func() wire.Heartbeat {
		st, err := b.Status(tb.ctx)
		require.NoError(t, err)
		for _, hb := range st.Agents {
			if hb.Agent == "stack-agent" {
				return hb
			}
		}
		return wire.Heartbeat{}
	}
	draining := func() bool { return heartbeat().Draining }

	require.NoError(t, b.Drain(tb.ctx, wire.DrainRequest{Caller: admin, Agent: "stack-agent"}, true))
	require.True(t, tb.stack.Agent.Draining())
	require.Eventually(t, draining, testutil.WaitTimeout(), 20*time.Millisecond, "the heartbeat says draining")

	code, body := tb.post(t, "user001", workflow(t, 1))
	require.Equal(t, http.StatusOK, code, string(body))
	var r struct {
		PromptID string `json:"prompt_id"`
	}
	require.NoError(t, json.Unmarshal(body, &r))
	// Taken in by the broker (the proxy only published it), then two of
	// the agent's heartbeats sent since: the agent, draining, holds no job.
	require.Eventually(t, func() bool {
		return len(b.Queues(tb.ctx, wire.QueuesRequest{Caller: admin}).Jobs) == 1
	}, testutil.WaitTimeout(), 20*time.Millisecond, "the broker took the prompt in")
	for range 2 {
		since := heartbeat().At
		var hb wire.Heartbeat
		require.Eventually(t, func() bool { hb = heartbeat(); return hb.At.After(since) }, testutil.WaitTimeout(), 20*time.Millisecond,
			"the agent's next heartbeat")
		require.True(t, hb.Draining)
		require.Empty(t, hb.Held, "a draining agent claims no job")
	}
	q := b.Queues(tb.ctx, wire.QueuesRequest{Caller: admin})
	require.Len(t, q.Jobs, 1)
	require.Equal(t, wire.StateQueued, q.Jobs[0].State, "a draining agent takes no job")

	require.NoError(t, b.Drain(tb.ctx, wire.DrainRequest{Caller: admin, Agent: "stack-agent"}, false))
	require.False(t, tb.stack.Agent.Draining())
	require.Eventually(t, func() bool {
		st, err := b.Status(tb.ctx)
		return err == nil && st.Finished[wire.StateSucceeded] == 1
	}, testutil.WaitTimeout(), 20*time.Millisecond, "the job runs once the agent is undrained")
	require.False(t, draining())

	err := b.Drain(tb.ctx, wire.DrainRequest{Caller: admin, Agent: "nobody"}, true)
	require.ErrorContains(t, err, "agent nobody is not connected")
	err = b.Drain(tb.ctx, wire.DrainRequest{Caller: wire.Caller{User: "user001", Role: wire.RoleParticipant}, Agent: "stack-agent"}, true)
	require.ErrorContains(t, err, "instructors only")
	require.False(t, tb.stack.Agent.Draining())
}
