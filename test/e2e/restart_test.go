package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/stretchr/testify/require"
)

// submission is one POST /prompt of the restart test: tag names the
// attempt (a retried POST gets a new tag, since a POST that failed may
// still have queued its job).
type submission struct {
	user, tag, id string
}

// burst posts perUser prompts for each user concurrently, retrying a POST
// the broker's absence refused until it is accepted. accepted counts the
// accepted POSTs as they come; failed collects the tags of refused ones.
func (s *system) burst(wf json.RawMessage, users []string, name string, seedBase, perUser int, accepted *atomic.Int64, failedTags *sync.Map) []submission {
	var (
		mu  sync.Mutex
		out []submission
		wg  sync.WaitGroup
	)
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perUser {
				for try := 0; ; try++ {
					tag := fmt.Sprintf("%s/%s/%d/try%d", name, u, i, try)
					prompt := steps(wf, 8, seedBase+i*100+try)
					body, _ := json.Marshal(map[string]any{"prompt": prompt, "extra_data": map[string]string{simTag: tag}})
					req, _ := http.NewRequest(http.MethodPost, s.proxyURL+"/"+u+"/prompt", bytes.NewReader(body))
					req.SetBasicAuth(u, s.password)
					req.Header.Set("Content-Type", "application/json")
					client := &http.Client{Timeout: 30 * time.Second}
					resp, err := client.Do(req)
					if err == nil && resp.StatusCode == http.StatusOK {
						var r struct {
							PromptID string `json:"prompt_id"`
						}
						err = json.NewDecoder(resp.Body).Decode(&r)
						resp.Body.Close()
						if err == nil && r.PromptID != "" {
							mu.Lock()
							out = append(out, submission{user: u, tag: tag, id: r.PromptID})
							mu.Unlock()
							accepted.Add(1)
							break
						}
					} else if err == nil {
						resp.Body.Close()
					}
					failedTags.Store(tag, true)
					time.Sleep(200 * time.Millisecond) // the broker is restarting
				}
			}
		}()
	}
	wg.Wait()
	return out
}

// The broker is killed with SIGKILL four times while 200 jobs go through
// it — during the intake of a burst of submissions, mid-run, right after a
// second burst, and near the end — and restarted each time on the same
// data directory. No accepted job is lost, and every one completes exactly
// once where it runs: the ComfyUI simulators' histories (the agent runs
// them as its external ComfyUIs) show each accepted prompt succeeded once,
// and a refused POST's prompt, if it got in after all, at most once.
func TestBrokerKilledMidRunLosesNothing(t *testing.T) {
	t.Parallel()
	users := []string{"user001", "user002", "user003", "user004"}
	s := startCore(t, users, "--ack-wait", "5s")
	sims := s.startSims(4, 5*time.Millisecond)
	s.startAgent("agent", "--id", "e2e-box", "--runtime", "external", "--comfy-urls", strings.Join(sims, ","),
		"--scratch", filepath.Join(t.TempDir(), "scratch"), "--retry-delay", "200ms")
	s.awaitSlots("e2e-box", 4)
	wf := workflow(t, "txt2img.json")

	succeeded := func() int {
		n := 0
		for _, r := range simRuns(t, sims) {
			for _, st := range r {
				if st == "success" {
					n++
				}
			}
		}
		return n
	}
	var (
		accepted atomic.Int64
		failed   sync.Map
		subs     []submission
		kills    []string
	)
	kill := func(why string) {
		t.Helper()
		kills = append(kills, fmt.Sprintf("%s (accepted %d, succeeded %d)", why, accepted.Load(), succeeded()))
		s.killBroker()
	}

	// Burst 1: 120 prompts; the broker dies while it takes them in.
	done := make(chan []submission)
	go func() { done <- s.burst(wf, users, "b1", 100_000, 30, &accepted, &failed) }()
	require.Eventually(t, func() bool { return accepted.Load() >= 40 }, 3*testutil.WaitTimeout(), 5*time.Millisecond)
	kill("intake of burst 1")
	subs = append(subs, <-done...)

	require.Eventually(t, func() bool { return succeeded() >= 50 }, 6*testutil.WaitTimeout(), 20*time.Millisecond)
	kill("mid-run")

	// Burst 2: 80 more; the broker dies right after they are in.
	subs = append(subs, s.burst(wf, users, "b2", 200_000, 20, &accepted, &failed)...)
	kill("right after burst 2")

	require.Eventually(t, func() bool { return succeeded() >= 180 }, 9*testutil.WaitTimeout(), 20*time.Millisecond)
	kill("near the end")
	refused := 0
	failed.Range(func(any, any) bool { refused++; return true })
	t.Logf("kills: %v; POSTs refused while the broker was down: %d", kills, refused)
	require.Len(t, subs, 200)

	// Every accepted job reaches success in its participant's history.
	ids := map[string]string{}
	for _, sub := range subs {
		ids[sub.id] = sub.user
	}
	require.Len(t, ids, 200)
	defer s.logUnfinished(t)
	s.awaitSuccess(t, ids)

	// And ran to completion exactly once where it ran.
	runs := simRuns(t, sims)
	for _, sub := range subs {
		successes := 0
		for _, st := range runs[sub.tag] {
			if st == "success" {
				successes++
			}
		}
		require.Equal(t, 1, successes, "%s (job %s) ran to completion %d times: %v", sub.tag, sub.id, successes, runs[sub.tag])
	}
	failed.Range(func(k, _ any) bool {
		n := 0
		for _, st := range runs[k.(string)] {
			if st == "success" {
				n++
			}
		}
		require.LessOrEqual(t, n, 1, "refused POST %s ran %d times", k, n)
		return true
	})
	require.Zero(t, simQueued(t, sims), "nothing left in ComfyUI's queues")
}
