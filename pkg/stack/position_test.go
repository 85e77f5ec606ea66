package stack

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/proxy"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// A participant's socket learns where their waiting prompts stand in the
// workshop's (round-robin) order, and hears again when that changes.
func TestQueuePositionOverWebSocket(t *testing.T) {
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
	queue("user002", 1)
	queue("user002", 2)
	mine := queue("user001", 3)

	c := tb.dial(t, "user001", "00000000000000000000000000000001")
	next := func() map[string]int {
		for {
			typ, b, err := c.Read(tb.ctx)
			require.NoError(t, err)
			if typ != websocket.MessageText {
				continue
			}
			var m struct {
				Type string `json:"type"`
				Data struct {
					Positions map[string]int `json:"positions"`
				} `json:"data"`
			}
			require.NoError(t, json.Unmarshal(b, &m))
			if m.Type == proxy.QueuePositionMessage {
				return m.Data.Positions
			}
		}
	}
	// Round-robin: user002's first, then user001's, then user002's second.
	require.Equal(t, map[string]int{mine: 2}, next())

	// When user002's prompts are cancelled, user001's is next.
	reply := tb.stack.Broker.Cancel(tb.ctx, wire.CancelRequest{Caller: wire.Caller{Role: wire.RoleInstructor}, User: "user002", AllPending: true})
	require.Len(t, reply.Affected, 2)
	deadline := time.Now().Add(testutil.WaitTimeout())
	for time.Now().Before(deadline) {
		if p := next(); p[mine] == 1 {
			return
		}
	}
	t.Fatal("the position never moved to 1")
}
