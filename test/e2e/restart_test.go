package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The broker is killed with SIGKILL twice while 200 jobs run and is
// restarted on the same data directory: no job is lost, and every job
// completes exactly once.
func TestBrokerKilledMidRunLosesNothing(t *testing.T) {
	t.Parallel()
	users := []string{"user001", "user002", "user003", "user004"}
	s := startSystem(t, systemOpts{users: users, gpus: 4, stepDelay: 5 * time.Millisecond,
		brokerArgs: []string{"--ack-wait", "5s"}})
	const perUser = 50
	wf := workflow(t, "txt2img.json")
	wf = bytes.Replace(wf, []byte(`"steps": 20`), []byte(`"steps": 8`), 1)

	ids := map[string]string{} // job → user
	for i := range perUser {
		for _, u := range users {
			p := s.participant(u)
			prompt := bytes.Replace(wf, []byte(`"seed": 424242`), fmt.Appendf(nil, `"seed": %d`, i), 1)
			ids[p.queue(prompt, "")] = u
		}
	}
	require.Len(t, ids, len(users)*perUser)

	succeeded := func() int { return strings.Count(s.agentLog(), `"result":"succeeded"`) }
	for _, at := range []int{40, 120} {
		require.Eventually(t, func() bool { return succeeded() >= at }, 2*time.Minute, 20*time.Millisecond)
		s.killBroker()
	}

	// Every job reaches success in its participant's history.
	require.Eventually(t, func() bool {
		for _, u := range users {
			var h map[string]struct {
				Status struct {
					StatusStr string `json:"status_str"`
				} `json:"status"`
			}
			code, body := s.participant(u).do(http.MethodGet, "/history", nil)
			if code != http.StatusOK || json.Unmarshal(body, &h) != nil {
				return false
			}
			n := 0
			for id, e := range h {
				if ids[id] == u && e.Status.StatusStr == "success" {
					n++
				}
			}
			if n != perUser {
				return false
			}
		}
		return true
	}, 3*time.Minute, 200*time.Millisecond, "not every job succeeded")

	// And none ran to completion twice on the GPU side. The agent logs a
	// job done once its ticket is acknowledged, which may come a little
	// after the broker recorded the result.
	var done map[string]int
	require.Eventually(t, func() bool {
		done = map[string]int{}
		sc := bufio.NewScanner(strings.NewReader(s.agentLog()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l struct {
				Message string `json:"message"`
				Job     string `json:"job"`
				Result  string `json:"result"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Message == "job done" && l.Result == "succeeded" {
				done[l.Job]++
			}
		}
		for id := range ids {
			if done[id] == 0 {
				return false
			}
		}
		return true
	}, time.Minute, 100*time.Millisecond, "not every job was logged done by the agent")
	for id := range ids {
		require.Equal(t, 1, done[id], "job %s completed %d times on the GPU side", id, done[id])
	}
}
