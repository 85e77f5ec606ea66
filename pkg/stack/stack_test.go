package stack

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/coder/websocket"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

type testBundle struct {
	stack *Stack
	ctx   context.Context
}

func setup(t *testing.T, users ...string) *testBundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*testutil.WaitTimeout())
	t.Cleanup(cancel)
	s, err := Start(ctx, Config{Dir: t.TempDir(), Users: users, Password: "pw", GPUs: 2, StepDelay: -1, Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { s.Stop(context.Background()) })
	return &testBundle{stack: s, ctx: ctx}
}

func (tb *testBundle) post(t *testing.T, user string, body []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(tb.ctx, http.MethodPost, tb.stack.ProxyURL()+"/"+user+"/prompt", bytes.NewReader(body))
	req.SetBasicAuth(user, "pw")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (tb *testBundle) dial(t *testing.T, user, sid string) *websocket.Conn {
	t.Helper()
	h := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":pw"))}}
	c, _, err := websocket.Dial(tb.ctx, "ws"+tb.stack.ProxyURL()[4:]+"/"+user+"/ws?clientId="+sid, &websocket.DialOptions{HTTPHeader: h})
	require.NoError(t, err)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

type msg struct {
	Type string `json:"type"`
	Data struct {
		PromptID      string  `json:"prompt_id"`
		Node          *string `json:"node"`
		ExceptionType string  `json:"exception_type"`
	} `json:"data"`
}

// finished reads until n prompts ended (executing null) and returns the
// message types seen per prompt.
func finished(t *testing.T, ctx context.Context, c *websocket.Conn, n int) map[string][]string {
	t.Helper()
	seen := map[string][]string{}
	done := 0
	for done < n {
		typ, b, err := c.Read(ctx)
		require.NoError(t, err)
		if typ != websocket.MessageText {
			continue
		}
		var m msg
		require.NoError(t, json.Unmarshal(b, &m))
		if m.Data.PromptID == "" {
			continue
		}
		seen[m.Data.PromptID] = append(seen[m.Data.PromptID], m.Type)
		if m.Type == "executing" && m.Data.Node == nil {
			done++
		}
	}
	return seen
}

func workflow(t *testing.T, sigma int) []byte {
	t.Helper()
	wf, err := os.ReadFile("../../examples/workflows/noweights.json")
	require.NoError(t, err)
	wf = bytes.Replace(wf, []byte(`"sigma": 1.5`), fmt.Appendf(nil, `"sigma": %d.5`, sigma), 1)
	return fmt.Appendf(nil, `{"prompt": %s, "client_id": "%s"}`, wf, "")
}

// The whole system in one process under the race detector: several
// participants at once, every job ends exactly once.
func TestConcurrentParticipants(t *testing.T) {
	t.Parallel()
	users := []string{"user001", "user002", "user003"}
	tb := setup(t, users...)
	const perUser = 6
	var wg sync.WaitGroup
	for i, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sid := fmt.Sprintf("%032d", i+1)
			c := tb.dial(t, u, sid)
			for j := range perUser {
				body := bytes.Replace(workflow(t, j+1), []byte(`"client_id": ""`), []byte(`"client_id": "`+sid+`"`), 1)
				code, resp := tb.post(t, u, body)
				require.Equal(t, http.StatusOK, code, string(resp))
			}
			seen := finished(t, tb.ctx, c, perUser)
			require.Len(t, seen, perUser)
			for id, types := range seen {
				require.Contains(t, types, "execution_success", id)
				require.Equal(t, "executing", types[len(types)-1])
			}
		}()
	}
	wg.Wait()
	st, err := tb.stack.Broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Equal(t, len(users)*perUser, st.Finished["succeeded"])
}

// A node that raises in ComfyUI fails the job: the participant gets
// ComfyUI's execution_error and an error history entry, and the next job
// runs normally.
func TestExecutionErrorReachesTheParticipant(t *testing.T) {
	t.Parallel()
	tb := setup(t, "user001")
	for _, sim := range tb.stack.Runtime.Simulators() {
		sim.SetFault(comfysim.Fault{Kind: comfysim.FaultExecutionError, Node: "ImageBlur", Message: "blur exploded", Count: 1})
	}
	sid := "0123456789abcdef0123456789abcdef"
	c := tb.dial(t, "user001", sid)
	body := bytes.Replace(workflow(t, 1), []byte(`"client_id": ""`), []byte(`"client_id": "`+sid+`"`), 1)
	code, resp := tb.post(t, "user001", body)
	require.Equal(t, http.StatusOK, code, string(resp))
	var r struct {
		PromptID string `json:"prompt_id"`
	}
	require.NoError(t, json.Unmarshal(resp, &r))
	seen := finished(t, tb.ctx, c, 1)
	require.Contains(t, seen[r.PromptID], "execution_error")
	require.NotContains(t, seen[r.PromptID], "execution_success")

	req, _ := http.NewRequest(http.MethodGet, tb.stack.ProxyURL()+"/user001/history/"+r.PromptID, nil)
	req.SetBasicAuth("user001", "pw")
	hresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer hresp.Body.Close()
	var h map[string]struct {
		Status struct {
			StatusStr string            `json:"status_str"`
			Completed bool              `json:"completed"`
			Messages  []json.RawMessage `json:"messages"`
		} `json:"status"`
	}
	require.NoError(t, json.NewDecoder(hresp.Body).Decode(&h))
	require.Equal(t, "error", h[r.PromptID].Status.StatusStr)
	require.False(t, h[r.PromptID].Status.Completed)
	last := h[r.PromptID].Status.Messages[len(h[r.PromptID].Status.Messages)-1]
	require.Contains(t, string(last), "blur exploded")
	require.Contains(t, string(last), r.PromptID, "ComfyUI's prompt id is translated to the participant's")

	// The slot is fine afterwards.
	for _, sim := range tb.stack.Runtime.Simulators() {
		sim.SetFault(comfysim.Fault{})
	}
	code, _ = tb.post(t, "user001", bytes.Replace(workflow(t, 2), []byte(`"client_id": ""`), []byte(`"client_id": "`+sid+`"`), 1))
	require.Equal(t, http.StatusOK, code)
	seen = finished(t, tb.ctx, c, 1)
	for _, types := range seen {
		require.Contains(t, types, "execution_success")
	}
}
