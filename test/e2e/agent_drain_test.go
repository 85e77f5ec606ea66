package e2e

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/stretchr/testify/require"
)

// SIGTERM to an agent process in the middle of a run, while a second
// agent serves the same pool: the first stops taking jobs, finishes the
// ones it runs (or gives them back) within its drain deadline and exits
// 0; the second does the rest. No job is lost, none completes twice
// (counted from both agents' logs), every job's history through the proxy
// says success.
//
// "finish": the deadline (15 s) is ample, the running jobs end on the
// first agent. "release": the deadline (300 ms) is shorter than a job
// (~1 s), so the running jobs are interrupted and given back, and the
// second agent runs them.
func TestAgentSIGTERMDrainsWhileAnotherServes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		drainTimeout time.Duration
		steps        int
	}{
		{"finish", 15 * time.Second, 20},        // ~0.5 s a job
		{"release", 300 * time.Millisecond, 45}, // ~1 s a job
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testDrain(t, tc.drainTimeout, tc.steps)
		})
	}
}

func testDrain(t *testing.T, drainTimeout time.Duration, steps int) {
	users := []string{"user001", "user002", "user003", "user004"}
	s := startCore(t, users)
	for _, name := range []string{"agent", "agent2"} {
		s.startAgent(name, "--id", "e2e-"+name, "--runtime", "simulated", "--gpus", "2",
			"--sim-dir", filepath.Join(t.TempDir(), "sim"), "--sim-step-delay", "20ms",
			"--retry-delay", "200ms", "--drain-timeout", drainTimeout.String())
	}
	s.awaitSlots("e2e-agent", 2)
	s.awaitSlots("e2e-agent2", 2)

	ids := s.queueJobs(t, users, 20, steps)
	// SIGTERM once the first agent has finished some jobs and runs more.
	require.Eventually(t, func() bool { return len(completions(s.log("agent"))) >= 2 }, testutil.WaitTimeout(), 20*time.Millisecond)
	before := logLines(s.log("agent"))
	held := map[string]bool{} // jobs the agent had before the signal
	for _, l := range before {
		if l.Job != "" {
			held[l.Job] = true
		}
	}
	sent := time.Now()
	require.NoError(t, s.procs["agent"].Process.Signal(syscall.SIGTERM))
	require.NoError(t, s.stopProcWithin("agent", drainTimeout+testutil.WaitTimeout()), "the draining agent exits 0")
	took := time.Since(sent)
	t.Logf("agent drained and exited %s after SIGTERM", took.Round(time.Millisecond))
	require.Less(t, took, drainTimeout+5*time.Second)

	// After the signal the agent took no new job: every job it ran after
	// it is one it held (running or prefetched) before.
	after := logLines(s.log("agent"))[len(before):]
	drained := false
	for _, l := range after {
		if l.Message == "draining: no new jobs" {
			drained = true
		}
		if l.Message == "running job" {
			require.True(t, held[l.Job], "job %s started after SIGTERM but was not held before it", l.Job)
		}
	}
	require.True(t, drained, "the agent logged no drain")
	if drainTimeout < time.Second {
		// The jobs it was running when the deadline passed went back.
		released := 0
		for _, l := range after {
			if l.Message == "releasing job for another attempt" && l.Reason == "the agent is draining and the deadline passed" {
				released++
			}
		}
		require.Positive(t, released, "the drain deadline released the running jobs")
	}

	s.awaitSuccess(t, ids)
	// A run logs "job done" after its report is recorded: stop the
	// second agent too, so both logs are complete.
	require.NoError(t, s.stopProc("agent2"))
	done := completions(s.log("agent"), s.log("agent2"))
	first := 0
	for id := range ids {
		require.Equal(t, 1, done[id], "job %s completed %d times across both agents", id, done[id])
	}
	for id := range completions(s.log("agent")) {
		if _, ok := ids[id]; ok {
			first++
		}
	}
	second := len(ids) - first
	t.Logf("jobs completed: %d by the drained agent, %d by the other", first, second)
	require.Positive(t, second, "the second agent served the rest")
}
