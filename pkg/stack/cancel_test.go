package stack

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

func (tb *testBundle) do(t *testing.T, user, method, path string, body []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(tb.ctx, method, tb.stack.ProxyURL()+"/"+user+path, bytes.NewReader(body))
	req.SetBasicAuth(user, "pw")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes()
}

// A participant cancels queued prompts from the ComfyUI UI (POST /queue
// delete and /api/jobs/{id}/cancel): the broker records them cancelled,
// they leave the queue, and nobody else's jobs are touched.
func TestParticipantCancelsQueuedPrompts(t *testing.T) {
	t.Parallel()
	tb := setup(t, "user001", "user002")
	require.NoError(t, tb.stack.Broker.SetPaused(tb.ctx, wire.Caller{Role: wire.RoleInstructor}, true))

	queue := func(user string, sigma int) string {
		code, body := tb.post(t, user, workflow(t, sigma))
		require.Equal(t, http.StatusOK, code, string(body))
		var r struct {
			PromptID string `json:"prompt_id"`
		}
		require.NoError(t, json.Unmarshal(body, &r))
		return r.PromptID
	}
	a, b := queue("user001", 1), queue("user001", 2)
	other := queue("user002", 3)
	pending := func(user string) int {
		code, body := tb.do(t, user, http.MethodGet, "/queue", nil)
		require.Equal(t, http.StatusOK, code)
		var q struct {
			Pending []json.RawMessage `json:"queue_pending"`
		}
		require.NoError(t, json.Unmarshal(body, &q))
		return len(q.Pending)
	}
	require.Eventually(t, func() bool { return pending("user001") == 2 && pending("user002") == 1 }, testutil.WaitTimeout(), 20*time.Millisecond)

	// user001 tries to delete user002's prompt along with their own.
	code, _ := tb.do(t, "user001", http.MethodPost, "/queue", []byte(`{"delete": ["`+a+`", "`+other+`"]}`))
	require.Equal(t, http.StatusOK, code)
	code, body := tb.do(t, "user001", http.MethodPost, "/api/jobs/"+b+"/cancel", nil)
	require.Equal(t, http.StatusOK, code, string(body))
	require.JSONEq(t, `{"cancelled": true}`, string(body))

	require.Eventually(t, func() bool { return pending("user001") == 0 }, testutil.WaitTimeout(), 20*time.Millisecond)
	require.Equal(t, 1, pending("user002"), "another participant's job is untouched")

	// Taken out of the queue before they ran, they leave no trace in the
	// participant's history or jobs list, as in ComfyUI.
	for _, id := range []string{a, b} {
		code, body = tb.do(t, "user001", http.MethodGet, "/api/jobs/"+id, nil)
		require.Equal(t, http.StatusNotFound, code, string(body))
		code, body = tb.do(t, "user001", http.MethodGet, "/history/"+id, nil)
		require.Equal(t, http.StatusOK, code)
		require.JSONEq(t, `{}`, string(body))
	}

	st, err := tb.stack.Broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, st.Finished[wire.StateCancelled])
}
