package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/stretchr/testify/require"
)

// A participant connects to /ws, queues the no-weights workflow, receives
// ComfyUI's messages in ComfyUI's order, finds the history entry and
// downloads the 128×96 SaveImage output.
func TestPromptThroughTheWholeSystem(t *testing.T) {
	t.Parallel()
	s := startSystem(t, systemOpts{users: []string{"user001"}})
	p := s.participant("user001")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const sid = "0123456789abcdef0123456789abcdef"
	ws := p.dial(ctx, sid)
	first := read(ctx, t, ws)
	require.Equal(t, "status", first.Type)
	var st struct {
		SID    string `json:"sid"`
		Status struct {
			ExecInfo struct {
				QueueRemaining int `json:"queue_remaining"`
			} `json:"exec_info"`
		} `json:"status"`
	}
	require.NoError(t, json.Unmarshal(first.Data, &st))
	require.Equal(t, sid, st.SID)
	require.Zero(t, st.Status.ExecInfo.QueueRemaining)

	id := p.queue(workflow(t, "noweights.json"), sid)

	// Collect this prompt's messages until ComfyUI's closing
	// "executing null".
	var seq []string
	executed := map[string]json.RawMessage{}
	for {
		m := read(ctx, t, ws)
		var d struct {
			PromptID string          `json:"prompt_id"`
			Node     *string         `json:"node"`
			Output   json.RawMessage `json:"output"`
		}
		_ = json.Unmarshal(m.Data, &d)
		if m.Type != "status" {
			require.Equal(t, id, d.PromptID, "message %s for another prompt: %s", m.Type, m.Data)
		}
		switch {
		case m.Type == "executing" && d.Node == nil:
			seq = append(seq, "executing:null")
		case m.Type == "executing":
			seq = append(seq, "executing:"+*d.Node)
		case m.Type == "executed":
			seq = append(seq, "executed:"+*d.Node)
			executed[*d.Node] = d.Output
		default:
			seq = append(seq, m.Type)
		}
		if seq[len(seq)-1] == "executing:null" {
			break
		}
	}
	t.Logf("messages: %v", seq)
	// ComfyUI's order exactly (comfyui-api.md §3.5), as the simulator
	// executes this graph; only status and progress_state, whose counts
	// depend on timing, are left out of the comparison.
	var durable []string
	for _, m := range seq {
		if m != "status" && m != "progress_state" {
			durable = append(durable, m)
		}
	}
	require.Equal(t, []string{
		"execution_start", "execution_cached",
		"executing:1", "executing:2", "executing:6", "executed:6",
		"executing:3", "executing:4", "executing:5", "executed:5",
		"execution_success", "executing:null",
	}, durable)
	require.Contains(t, seq, "progress_state")
	require.Equal(t, "status", seq[len(seq)-2], "a status with the new queue length precedes executing null")
	require.NotContains(t, string(executed["5"]), "user001", "the participant's own names, no user prefix")

	entry := p.awaitHistory(id, testutil.WaitTimeout())
	var status struct {
		StatusStr string            `json:"status_str"`
		Completed bool              `json:"completed"`
		Messages  []json.RawMessage `json:"messages"`
	}
	require.NoError(t, json.Unmarshal(entry["status"], &status))
	require.Equal(t, "success", status.StatusStr)
	require.True(t, status.Completed)
	require.NotEmpty(t, status.Messages)
	var tuple []json.RawMessage
	require.NoError(t, json.Unmarshal(entry["prompt"], &tuple))
	require.Len(t, tuple, 5)
	require.Equal(t, `"`+id+`"`, string(tuple[1]))
	require.JSONEq(t, `["5","6"]`, string(tuple[4]))

	var outputs map[string]struct {
		Images []outputImage `json:"images"`
	}
	require.NoError(t, json.Unmarshal(entry["outputs"], &outputs))
	require.Len(t, outputs["5"].Images, 1)
	img := outputs["5"].Images[0]
	require.Equal(t, outputImage{Filename: "noweights_00001_.png", Subfolder: "sim", Type: "output"}, img)

	code, body := p.view(img)
	require.Equal(t, http.StatusOK, code)
	decoded, err := png.Decode(bytes.NewReader(body))
	require.NoError(t, err)
	require.Equal(t, 128, decoded.Bounds().Dx())
	require.Equal(t, 96, decoded.Bounds().Dy())

	// The preview (temp) output is downloadable too.
	require.Len(t, outputs["6"].Images, 1)
	code, _ = p.view(outputs["6"].Images[0])
	require.Equal(t, http.StatusOK, code)
}

// Four participants post twenty prompts each at once: every job completes
// once, and each participant sees only their own jobs, events and files.
func TestFourParticipantsTwentyPromptsEach(t *testing.T) {
	t.Parallel()
	users := []string{"user001", "user002", "user003", "user004"}
	s := startSystem(t, systemOpts{users: users})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const perUser = 20

	ids := make(map[string][]string)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := s.participant(u)
			sid := strings.Repeat(u[len(u)-1:], 32)
			ws := p.dial(ctx, sid)
			require.Equal(t, "status", read(ctx, t, ws).Type)

			var mine []string
			for i := range perUser {
				// Vary the prompt so ComfyUI's cache does not answer it.
				wf := bytes.Replace(workflow(t, "noweights.json"), []byte(`"sigma": 1.5`), fmt.Appendf(nil, `"sigma": %d.5`, 1+i%5), 1)
				wf = bytes.Replace(wf, []byte(`"width": 128`), fmt.Appendf(nil, `"width": %d`, 100+i), 1)
				// Names of one's own, so that reading another's file by
				// name can only succeed by crossing into their folder.
				wf = bytes.Replace(wf, []byte(`"sim/noweights"`), fmt.Appendf(nil, `"sim/%s-noweights"`, u), 1)
				mine = append(mine, p.queue(wf, sid))
			}
			want := map[string]bool{}
			for _, id := range mine {
				want[id] = true
			}
			// Every finished prompt ends with executing null on our
			// socket, and no other participant's prompt shows up.
			done := map[string]bool{}
			for len(done) < perUser {
				m := read(ctx, t, ws)
				var d struct {
					PromptID string  `json:"prompt_id"`
					Node     *string `json:"node"`
				}
				_ = json.Unmarshal(m.Data, &d)
				if d.PromptID != "" {
					require.True(t, want[d.PromptID], "%s got a message of someone else's prompt %s", u, d.PromptID)
				}
				if m.Type == "executing" && d.Node == nil {
					require.False(t, done[d.PromptID], "prompt %s finished twice", d.PromptID)
					done[d.PromptID] = true
				}
			}
			mu.Lock()
			ids[u] = mine
			mu.Unlock()
		}()
	}
	wg.Wait()
	require.Len(t, ids, len(users))

	for i, u := range users {
		p := s.participant(u)
		var all map[string]json.RawMessage
		code, body := p.do(http.MethodGet, "/history", nil)
		require.Equal(t, http.StatusOK, code)
		require.NoError(t, json.Unmarshal(body, &all))
		require.Len(t, all, perUser, "%s sees exactly their own history", u)
		for _, id := range ids[u] {
			require.Contains(t, all, id)
		}

		// Another participant's prompt id gives an empty entry and their
		// file a 404.
		other := users[(i+1)%len(users)]
		otherID := ids[other][0]
		require.Nil(t, p.historyEntry(otherID))
		entry := s.participant(other).historyEntry(otherID)
		var outputs map[string]struct {
			Images []outputImage `json:"images"`
		}
		require.NoError(t, json.Unmarshal(entry["outputs"], &outputs))
		code, _ = s.participant(other).view(outputs["5"].Images[0])
		require.Equal(t, http.StatusOK, code)
		code, _ = p.view(outputs["5"].Images[0])
		require.Equal(t, http.StatusNotFound, code, "%s must not read %s's output", u, other)
	}

	var st struct {
		Finished map[string]int `json:"finished"`
		Queued   map[string]int `json:"queued"`
		InFlight map[string]int `json:"inflight"`
	}
	require.NoError(t, getJSON("http://"+s.brokerAt+"/api/status", "", "", &st))
	require.Equal(t, len(users)*perUser, st.Finished["succeeded"], "every job completed exactly once")
	require.Zero(t, st.Queued["default"])
	require.Zero(t, st.InFlight["default"])
}

// Bad input gets ComfyUI's error shapes, and nothing is queued.
func TestBadInputIsRefusedAndNothingQueued(t *testing.T) {
	t.Parallel()
	s := startSystem(t, systemOpts{users: []string{"user001", "user002"}})
	p := s.participant("user001")

	code, body := p.do(http.MethodPost, "/prompt", []byte(`{"prompt": {`))
	require.Equal(t, http.StatusInternalServerError, code, "ComfyUI answers invalid JSON with 500")
	require.Contains(t, strings.ToLower(string(body)), "json")

	type comfyErr struct {
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
			Details string `json:"details"`
		} `json:"error"`
		NodeErrors map[string]any `json:"node_errors"`
	}
	var e comfyErr
	code, body = p.do(http.MethodPost, "/prompt", []byte(`{"client_id": "x"}`))
	require.Equal(t, http.StatusBadRequest, code)
	require.NoError(t, json.Unmarshal(body, &e))
	require.Equal(t, "no_prompt", e.Error.Type)
	require.Equal(t, "No prompt provided", e.Error.Message)
	require.Equal(t, "No prompt provided", e.Error.Details)
	require.NotNil(t, e.NodeErrors)
	require.Empty(t, e.NodeErrors)

	code, body = p.do(http.MethodPost, "/api/prompt", []byte(`{"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}`))
	require.Equal(t, http.StatusBadRequest, code)
	e = comfyErr{}
	require.NoError(t, json.Unmarshal(body, &e))
	require.Equal(t, "invalid_prompt", e.Error.Type)
	require.Contains(t, e.Error.Message, "NoSuchNode")
	require.Equal(t, "Node ID '#1'", e.Error.Details)

	// Wrong password → 401; another participant's prefix → 403.
	bad := *p
	bad.pass = "wrong"
	code, _ = bad.do(http.MethodGet, "/queue", nil)
	require.Equal(t, http.StatusUnauthorized, code)
	other := *p
	other.base = s.proxyURL + "/user002"
	code, _ = other.do(http.MethodGet, "/queue", nil)
	require.Equal(t, http.StatusForbidden, code)

	// Nothing was queued.
	code, body = p.do(http.MethodGet, "/queue", nil)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"queue_running": [], "queue_pending": []}`, string(body))
	code, body = p.do(http.MethodGet, "/prompt", nil)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"exec_info": {"queue_remaining": 0}}`, string(body))
	var st struct {
		Users map[string]any `json:"users"`
	}
	require.NoError(t, getJSON("http://"+s.brokerAt+"/api/status", "", "", &st))
	require.Empty(t, st.Users)
}
