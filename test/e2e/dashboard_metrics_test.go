package e2e

import (
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/wire"
)

// After a scripted run — two jobs done, one cancelled while the queue was
// paused, one left waiting — /metrics and `atelier-broker status` tell
// exactly that.
func TestDashboardMetricsAndStatusCommand(t *testing.T) {
	t.Parallel()
	s := startDashStack(t, 1, -1)
	api := func(op, body string) {
		t.Helper()
		nc := s.broker.Conn()
		_, err := nc.Request(wire.BrokerAPISubject(op), []byte(body), testutil.WaitTimeout())
		require.NoError(t, err)
	}
	waitFor := func(cond func(string) bool) string {
		t.Helper()
		var out string
		testutil.Eventually(t, func() bool { out = scrape(t, s.broker.HTTPURL()+"/metrics"); return cond(out) },
			"metrics never matched")
		return out
	}
	caller := `"caller":{"user":"teacher","role":"instructor"}`

	s.submit(t, "user001", "a")
	s.submit(t, "user002", "b")
	waitFor(func(m string) bool {
		return contains(m, `atelier_jobs_finished_total{pool="default",state="succeeded"} 2`)
	})

	api("pause", `{`+caller+`}`)
	doomed := s.submit(t, "user001", "c")
	s.submit(t, "user002", "d")
	api("cancel", `{`+caller+`,"user":"user001","job_ids":["`+doomed+`"]}`)
	m := waitFor(func(m string) bool {
		// The slot turns idle with the agent's next heartbeat.
		return contains(m, `atelier_jobs_finished_total{pool="default",state="cancelled"} 1`) &&
			contains(m, `atelier_queue_depth{pool="default"} 1`) &&
			contains(m, `atelier_agent_slots{agent="dash-box",pool="default",state="idle"} 1`)
	})
	for _, want := range []string{
		`atelier_jobs_submitted_total{pool="default"} 4`,
		`atelier_user_jobs{pool="default",state="queued",user="user002"} 1`,
		`atelier_jobs{state="running"} 0`,
		`atelier_job_wait_seconds_count{pool="default"} 2`,
		`atelier_job_run_seconds_count{pool="default",state="succeeded"} 2`,
		`atelier_output_files_total{pool="default"} 2`,
		`atelier_agent_up{agent="dash-box",pool="default"} 1`,
		`atelier_agent_slots{agent="dash-box",pool="default",state="idle"} 1`,
		`atelier_nats_connected 1`,
		`atelier_filestore_files{kind="output",user="user001"} 1`,
		`atelier_filestore_files{kind="output",user="user002"} 1`,
		// The two outputs came into the file store through the daemon's
		// counting store.
		`atelier_transfer_files_total{direction="in",kind="output"} 2`,
	} {
		require.Contains(t, m, want)
	}
	require.Regexp(t, `atelier_transfer_bytes_total\{direction="in",kind="output"\} [1-9]`, m)

	// The status command, with instructor credentials (full picture) and
	// without (the broker's open status).
	status := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(filepath.Join(binDir, "atelier-broker"), append([]string{"status", "--url", s.broker.HTTPURL()}, args...)...).CombinedOutput()
		require.NoError(t, err, string(out))
		return string(out)
	}
	// The pause and the queued job's position come from the dashboard's
	// poll of the broker (every 500 ms here), the job list from JOBS: the
	// poll that first says paused may have come before the job was queued.
	queuedAt := regexp.MustCompile(`\d+\s+\w{8}\s+user002\s+default\s+queued`)
	var out string
	testutil.Eventually(t, func() bool {
		out = status("--user", "teacher", "--password", dashPassword)
		return contains(out, "queue PAUSED") && queuedAt.MatchString(out)
	}, "the status never showed the pause and the queued job's position")
	// The slot's state is the agent's last heartbeat: it may still say
	// busy for a moment after its job ended.
	require.Regexp(t, `waiting 1 \(queued 1, dispatched 0\)  running 0  GPUs busy [01]/1  agents 1  last hour: 2 done, 0 failed`, out)
	require.Regexp(t, `dash-box\s+gpu0\s+Simulated GPU 0\s+(idle|busy)`, out)
	require.Regexp(t, `user001\s+0\s+0\s+1\s+0`, out)
	require.Regexp(t, `user002\s+1\s+0\s+1\s+0`, out)

	out = status()
	require.Contains(t, out, "waiting 1 (queued 1, dispatched 0)  running 0")
	require.Regexp(t, `default\s+1\s+0\s+0\s+[01]/1`, out)

	cmd := exec.Command(filepath.Join(binDir, "atelier-broker"), "status", "--url", s.broker.HTTPURL(), "--user", "user001", "--password", dashPassword)
	b, err := cmd.CombinedOutput()
	require.Error(t, err, "a participant may not read the dashboard API")
	require.Contains(t, string(b), "403")
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
