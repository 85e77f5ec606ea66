package stack

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/wire"
)

// withPromptID is the noweights workflow (blur sigma n.5) under a
// client-chosen prompt_id.
func withPromptID(t *testing.T, id string, sigma int) []byte {
	t.Helper()
	return bytes.Replace(workflow(t, sigma), []byte(`"client_id": ""`), []byte(`"prompt_id": "`+id+`"`), 1)
}

// sigmaOf reads the blur sigma back out of a history entry's prompt.
func sigmaOf(t *testing.T, entry map[string]any) float64 {
	t.Helper()
	graph := entry["prompt"].([]any)[2].(map[string]any)
	for _, n := range graph {
		node := n.(map[string]any)
		if node["class_type"] == "ImageBlur" {
			return node["inputs"].(map[string]any)["sigma"].(float64)
		}
	}
	t.Fatal("no ImageBlur in the prompt")
	return 0
}

// Client-chosen prompt ids (POST /prompt {"prompt_id"}) through the real
// broker: another participant may use the same id (their jobs never
// collide), a prompt id still queued is refused rather than answered 200
// and dropped, two submissions of one id racing each other run once, and a
// finished id queued again runs again, as in ComfyUI.
func TestClientPromptIDs(t *testing.T) {
	t.Parallel()
	tb := startStack(t, Config{Users: []string{"user001", "user002"}})
	instructor := wire.Caller{Role: wire.RoleInstructor}
	const id = "6f1c2a4e-1b2f-4c3d-9e8a-0c1d2e3f4a5b"

	// Both participants queue the same id while dispatch is paused, so
	// both are unfinished at once (and within SUBMIT's duplicate window).
	require.NoError(t, tb.stack.Broker.SetPaused(tb.ctx, instructor, true))
	require.Equal(t, id, tb.submit(t, "user001", withPromptID(t, id, 1)))
	require.Equal(t, id, tb.submit(t, "user002", withPromptID(t, id, 2)))

	// The same participant again while it waits: refused, in ComfyUI's
	// error shape, and nothing more is queued.
	code, body := tb.post(t, "user001", withPromptID(t, id, 3))
	require.Equal(t, http.StatusBadRequest, code, string(body))
	var refusal struct {
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
		NodeErrors map[string]any `json:"node_errors"`
	}
	require.NoError(t, json.Unmarshal(body, &refusal))
	require.Equal(t, "invalid_prompt_id", refusal.Error.Type)
	require.Contains(t, refusal.Error.Message, "already queued")
	require.NotNil(t, refusal.NodeErrors)

	require.NoError(t, tb.stack.Broker.SetPaused(tb.ctx, instructor, false))
	a, b := tb.history(t, "user001", id), tb.history(t, "user002", id)
	require.Equal(t, "success", a["status"].(map[string]any)["status_str"])
	require.Equal(t, "success", b["status"].(map[string]any)["status_str"])
	require.Equal(t, 1.5, sigmaOf(t, a), "user001's own prompt ran for user001")
	require.Equal(t, 2.5, sigmaOf(t, b), "user002's own prompt ran for user002")

	// A finished id queued again runs again, with the new prompt.
	require.Equal(t, id, tb.submit(t, "user001", withPromptID(t, id, 4)))
	require.Eventually(t, func() bool {
		code, body := tb.do(t, "user001", http.MethodGet, "/history/"+id, nil)
		var h map[string]map[string]any
		return code == http.StatusOK && json.Unmarshal(body, &h) == nil && h[id] != nil &&
			h[id]["status"].(map[string]any)["status_str"] == "success" && sigmaOf(t, h[id]) == 4.5
	}, 3*testutil.WaitTimeout(), 20*time.Millisecond, "the second run of the id")
	require.Equal(t, 2.5, sigmaOf(t, tb.history(t, "user002", id)), "user002's job is untouched")

	// Two submissions of a fresh id at once: one is queued, the other is
	// told so; the prompt runs once.
	require.NoError(t, tb.stack.Broker.SetPaused(tb.ctx, instructor, true))
	const raced = "0d9e0c1a-2b3c-4d5e-8f70-8192a3b4c5d6"
	codes := make([]int, 2)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _ = tb.post(t, "user001", withPromptID(t, raced, 5+i))
		}()
	}
	wg.Wait()
	require.ElementsMatch(t, []int{http.StatusOK, http.StatusBadRequest}, codes)
	require.NoError(t, tb.stack.Broker.SetPaused(tb.ctx, instructor, false))
	tb.history(t, "user001", raced)

	st, err := tb.stack.Broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Equal(t, 4, st.Finished[wire.StateSucceeded], "user001 twice, user002 once, the raced id once")
	for pool, n := range st.Queued {
		require.Zero(t, n, pool)
	}
	// Every submission is accounted for: none was left behind in SUBMIT
	// (where it would hold a backlog slot for ever).
	nc, err := nats.Connect(tb.stack.Broker.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		s, err := js.Stream(tb.ctx, wire.StreamSubmit)
		return err == nil && s.CachedInfo().State.Msgs == 0
	}, testutil.WaitTimeout(), 20*time.Millisecond)
}
