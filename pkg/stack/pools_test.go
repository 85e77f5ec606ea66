package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/agent/runtime/simulated"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
)

// simHistoryCount is how many prompts a runtime's simulators ran.
func simHistoryCount(t *testing.T, rt *simulated.Runtime) int {
	t.Helper()
	n := 0
	for _, sim := range rt.Simulators() {
		resp, err := http.Get(sim.URL() + "/history")
		require.NoError(t, err)
		var h map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&h))
		resp.Body.Close()
		n += len(h)
	}
	return n
}

// Pools at submit: a prompt naming a model that only another pool's GPU
// boxes have goes to that pool and runs there; one naming a model no pool
// has is refused with ComfyUI's node_errors and never queued.
func TestPromptGoesToThePoolWithItsModel(t *testing.T) {
	t.Parallel()
	tb := startStack(t, Config{Users: []string{"user001"}})
	const bigModel = "flux1-dev-fp8.safetensors"

	// A second GPU box in pool "big", whose ComfyUI has the model.
	big := &simulated.Runtime{GPUs: 1, Dir: t.TempDir(), StepDelay: -1, Logger: zerolog.Nop(),
		Configure: func(_ int, c *comfysim.Config) {
			c.Models = comfysim.DefaultModels()
			c.Models["checkpoints"] = append(c.Models["checkpoints"], bigModel)
		}}
	a, err := agent.New(agent.Config{ID: "big-agent", Pool: "big", NATSURL: tb.stack.Broker.ClientURL(), Runtime: big,
		HeartbeatInterval: 200 * time.Millisecond, RetryDelay: 500 * time.Millisecond, Logger: zerolog.Nop()})
	require.NoError(t, err)
	require.NoError(t, a.Start(tb.ctx))
	t.Cleanup(func() { _ = a.Stop(context.Background()) })
	require.Eventually(t, func() bool {
		st, err := tb.stack.Broker.Status(tb.ctx)
		return err == nil && st.Catalogs == 2
	}, testutil.WaitTimeout(), 20*time.Millisecond)

	wf, err := os.ReadFile("../../examples/workflows/txt2img.json")
	require.NoError(t, err)
	t2i := strings.Replace(string(wf), `"steps": 20`, `"steps": 2`, 1)

	// The participant's own pool (default) can run the usual checkpoint.
	own := tb.submit(t, "user001", fmt.Appendf(nil, `{"prompt": %s}`, t2i))
	require.Equal(t, "success", tb.history(t, "user001", own)["status"].(map[string]any)["status_str"])
	require.Equal(t, 1, simHistoryCount(t, tb.stack.Runtime))
	require.Equal(t, 0, simHistoryCount(t, big))

	// The model only "big" has.
	onBig := tb.submit(t, "user001", fmt.Appendf(nil, `{"prompt": %s}`,
		strings.Replace(t2i, comfysim.DefaultCheckpoint, bigModel, 1)))
	require.Equal(t, "success", tb.history(t, "user001", onBig)["status"].(map[string]any)["status_str"])
	require.Equal(t, 1, simHistoryCount(t, big), "it ran on the pool that has the model")
	require.Equal(t, 1, simHistoryCount(t, tb.stack.Runtime))

	// A model nobody has: the participant's own pool's refusal.
	code, body := tb.post(t, "user001", fmt.Appendf(nil, `{"prompt": %s}`,
		strings.Replace(t2i, comfysim.DefaultCheckpoint, "nobody-has-this.safetensors", 1)))
	require.Equal(t, http.StatusBadRequest, code, string(body))
	var refusal struct {
		Error      struct{ Type string } `json:"error"`
		NodeErrors map[string]struct {
			Errors []struct {
				Type    string `json:"type"`
				Details string `json:"details"`
			} `json:"errors"`
		} `json:"node_errors"`
	}
	require.NoError(t, json.Unmarshal(body, &refusal))
	require.Equal(t, "prompt_outputs_failed_validation", refusal.Error.Type)
	require.Equal(t, "value_not_in_list", refusal.NodeErrors["10"].Errors[0].Type)
	require.Contains(t, refusal.NodeErrors["10"].Errors[0].Details, "'nobody-has-this.safetensors' not in")
	require.NotContains(t, refusal.NodeErrors["10"].Errors[0].Details, bigModel, "the participant's own pool's list")

	st, err := tb.stack.Broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, st.Finished[wire.StateSucceeded], "the refused prompt was never queued")
}

// The registry's per-participant cap on unfinished prompts
// (quotas.max_queued), through the real broker: the prompt past it is
// refused in ComfyUI's error shape (the UI shows it), never dropped; once
// one finishes there is room again.
func TestMaxQueuedThroughTheBroker(t *testing.T) {
	t.Parallel()
	tb := startStack(t, Config{Users: []string{"user001", "user002"}})
	_, err := tb.stack.Registry.Update(tb.ctx, "user001", func(u *registry.User) error {
		u.Quotas = &registry.Quotas{MaxQueued: 2}
		return nil
	})
	require.NoError(t, err)
	instructor := wire.Caller{Role: wire.RoleInstructor}
	require.NoError(t, tb.stack.Broker.SetPaused(tb.ctx, instructor, true))

	a := tb.submit(t, "user001", workflow(t, 1))
	b := tb.submit(t, "user001", workflow(t, 2))
	code, body := tb.post(t, "user001", workflow(t, 3))
	require.Equal(t, http.StatusBadRequest, code, string(body))
	var refusal struct {
		Error struct {
			Type, Message, Details string
		} `json:"error"`
		NodeErrors map[string]any `json:"node_errors"`
	}
	require.NoError(t, json.Unmarshal(body, &refusal))
	require.Equal(t, "queue_full", refusal.Error.Type)
	require.Equal(t, "Your queue is full", refusal.Error.Message)
	require.NotNil(t, refusal.NodeErrors)
	// Another participant is not held back by it.
	tb.submit(t, "user002", workflow(t, 4))
	tb.submit(t, "user002", workflow(t, 5))
	tb.submit(t, "user002", workflow(t, 6))

	require.NoError(t, tb.stack.Broker.SetPaused(tb.ctx, instructor, false))
	tb.history(t, "user001", a)
	tb.history(t, "user001", b)
	c := tb.submit(t, "user001", workflow(t, 3))
	tb.history(t, "user001", c)
	st, err := tb.stack.Broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st, err = tb.stack.Broker.Status(tb.ctx)
		return err == nil && st.Finished[wire.StateSucceeded] == 6
	}, 3*testutil.WaitTimeout(), 20*time.Millisecond, "every accepted prompt ran: %+v", st.Finished)
}
