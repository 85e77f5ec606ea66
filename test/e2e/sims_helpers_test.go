package e2e

// Helpers for tests that count executions where they happen: ComfyUI is
// played by atelier-comfysim processes (the agent's external runtime), and
// each prompt carries a tag in extra_data that the simulator's history
// keeps, so a test reads from the simulators how often each job ran and
// how each run ended. The job states are read from JOBS itself.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// startSims starts n atelier-comfysim processes ("sim0" …) on loopback and
// returns their URLs. They are stopped after the agent.
func (s *system) startSims(n int, stepDelay time.Duration) []string {
	s.t.Helper()
	comfysimBin(s.t)
	base := freePorts(s.t, n)
	var urls []string
	for i := range n {
		name := "sim" + strconv.Itoa(i)
		s.start(name, "atelier-comfysim", "--port", strconv.Itoa(base+i), "--base-directory", filepath.Join(s.t.TempDir(), name),
			"--step-delay", stepDelay.String(), "--log-format", "json")
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", base+i))
	}
	for _, u := range urls {
		s.awaitHealthy(u + "/system_stats")
	}
	s.t.Cleanup(func() {
		_ = s.stopProc("agent")
		for i := range n {
			_ = s.stopProc("sim" + strconv.Itoa(i))
		}
	})
	return urls
}

// simTag is the extra_data key that names a test's prompt.
const simTag = "atelier_test_tag"

// queueTagged queues prompt with tag in its extra_data and returns the
// job id.
func (p *participant) queueTagged(prompt json.RawMessage, tag string) string {
	p.t.Helper()
	body, _ := json.Marshal(map[string]any{"prompt": prompt, "extra_data": map[string]string{simTag: tag}})
	code, resp := p.do(http.MethodPost, "/prompt", body)
	require.Equal(p.t, http.StatusOK, code, string(resp))
	var r struct {
		PromptID string `json:"prompt_id"`
	}
	require.NoError(p.t, json.Unmarshal(resp, &r))
	require.NotEmpty(p.t, r.PromptID)
	return r.PromptID
}

// simRuns reads every simulator's history and returns, per tag, the
// status_str of each run that finished there (success, error).
func simRuns(t *testing.T, urls []string) map[string][]string {
	t.Helper()
	runs := map[string][]string{}
	for _, u := range urls {
		var h map[string]struct {
			Prompt []json.RawMessage `json:"prompt"`
			Status struct {
				StatusStr string `json:"status_str"`
			} `json:"status"`
		}
		require.NoError(t, getJSON(u+"/history", "", "", &h))
		for _, e := range h {
			require.GreaterOrEqual(t, len(e.Prompt), 4, "history entry without extra_data")
			var extra map[string]any
			require.NoError(t, json.Unmarshal(e.Prompt[3], &extra))
			tag, _ := extra[simTag].(string)
			runs[tag] = append(runs[tag], e.Status.StatusStr)
		}
	}
	return runs
}

// simQueued counts the prompts waiting or running in the simulators'
// queues.
func simQueued(t *testing.T, urls []string) int {
	t.Helper()
	n := 0
	for _, u := range urls {
		var q struct {
			Running []json.RawMessage `json:"queue_running"`
			Pending []json.RawMessage `json:"queue_pending"`
		}
		require.NoError(t, getJSON(u+"/queue", "", "", &q))
		n += len(q.Running) + len(q.Pending)
	}
	return n
}

// jobsKV opens the broker's JOBS bucket over NATS.
func (s *system) jobsKV() jetstream.KeyValue {
	s.t.Helper()
	nc, err := nats.Connect(s.natsURL)
	require.NoError(s.t, err)
	s.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(s.t, err)
	kv, err := js.KeyValue(context.Background(), wire.BucketJobs)
	require.NoError(s.t, err)
	return kv
}

// jobRecord reads a job's record from JOBS (zero if absent).
func jobRecord(t *testing.T, kv jetstream.KeyValue, user, id string) wire.JobRecord {
	t.Helper()
	var r wire.JobRecord
	e, err := kv.Get(context.Background(), wire.JobKey(user, id))
	if err != nil {
		return r
	}
	require.NoError(t, json.Unmarshal(e.Value(), &r))
	return r
}

// steps sets the txt2img workflow's sampler steps (its run time) and seed.
func steps(wf json.RawMessage, n, seed int) json.RawMessage {
	out := strings.Replace(string(wf), `"steps": 20`, fmt.Sprintf(`"steps": %d`, n), 1)
	return json.RawMessage(strings.Replace(out, `"seed": 424242`, fmt.Sprintf(`"seed": %d`, seed), 1))
}
