package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
)

// brokerCLI runs `atelier-broker <cmd> --broker … --data … args…` as a
// process and returns its output and error.
func (s *system) brokerCLI(cmd string, args ...string) (string, error) {
	s.t.Helper()
	flags := []string{cmd, "--broker", "http://" + s.brokerAt, "--data", s.dataDir}
	if cmd == "status" {
		flags = []string{cmd, "--url", "http://" + s.brokerAt, "--data", s.dataDir}
	}
	c := exec.Command(filepath.Join(binDir, "atelier-broker"), append(flags, args...)...)
	c.Env = cleanEnv()
	out, err := c.CombinedOutput()
	return string(out), err
}

// cleanEnv is the environment without ATELIER_* settings of whoever runs
// the tests.
func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "ATELIER_") {
			env = append(env, e)
		}
	}
	return env
}

func (s *system) mustCLI(cmd string, args ...string) string {
	s.t.Helper()
	out, err := s.brokerCLI(cmd, args...)
	require.NoError(s.t, err, "atelier-broker %s %v: %s", cmd, args, out)
	return out
}

// agentDraining reads the agent's drain flag from its heartbeat.
func (s *system) agentDraining(id string) bool {
	var st struct {
		Agents []wire.Heartbeat `json:"agents"`
	}
	if getJSON("http://"+s.brokerAt+"/api/status", "", "", &st) != nil {
		return false
	}
	for _, hb := range st.Agents {
		if hb.Agent == id {
			return hb.Draining
		}
	}
	return false
}

// The instructor's controls as they are used: atelier-broker processes
// against a running broker (which reaches a real agent process): pause,
// queues, policy, bump, cancel, drain, undrain, status (once and --watch,
// checked against the known state), resume; and the refusals (a wrong
// token, a bad policy, missing arguments).
func TestBrokerControlCommands(t *testing.T) {
	t.Parallel()
	s := startSystem(t, systemOpts{users: []string{"user001", "user002"}, gpus: 1, stepDelay: 10 * time.Millisecond})

	require.Equal(t, "pause: ok\n", s.mustCLI("pause"))
	wf := workflow(t, "txt2img.json")
	queue := func(user string, seed int) string {
		return s.participant(user).queue(bytes.Replace(wf, []byte(`"seed": 424242`), fmt.Appendf(nil, `"seed": %d`, seed), 1), "")
	}
	a1, a2 := queue("user001", 1), queue("user001", 2)
	b1 := queue("user002", 3)

	// Round-robin: user001, user002, user001.
	out := s.mustCLI("queues")
	require.Contains(t, out, "dispatch PAUSED, policy round-robin, 3 unfinished jobs")
	require.Regexp(t, `(?m)^1\s+queued\s+user001\s+`+a1+`\s+default`, out)
	require.Regexp(t, `(?m)^2\s+queued\s+user002\s+`+b1, out)
	require.Regexp(t, `(?m)^3\s+queued\s+user001\s+`+a2, out)

	require.Equal(t, "policy: ok\n", s.mustCLI("policy", "fifo"))
	require.Contains(t, s.mustCLI("queues"), "policy fifo")
	out, err := s.brokerCLI("policy", "lottery")
	require.Error(t, err)
	require.Contains(t, out, `unknown policy "lottery"`)

	// The instructor bumps user002's job; under priority it goes first.
	require.Equal(t, "bump: ok\n", s.mustCLI("bump", "user002", b1))
	require.Equal(t, "policy: ok\n", s.mustCLI("policy", "priority"))
	out = s.mustCLI("queues")
	require.Contains(t, out, "policy priority")
	require.Regexp(t, `(?m)^1\*\s+queued\s+user002\s+`+b1, out)
	out, err = s.brokerCLI("bump", "user002", "no-such-job")
	require.Error(t, err)
	require.Contains(t, out, "no queued job no-such-job")

	require.Equal(t, "cancelled or interrupted: "+a2+"\n", s.mustCLI("cancel", "user001", a2))
	out = s.mustCLI("queues")
	require.Contains(t, out, "2 unfinished jobs")
	require.NotContains(t, out, a2)

	// Drain and undrain reach the agent process: its heartbeat says so.
	require.Equal(t, "drain: ok\n", s.mustCLI("drain", "e2e-box"))
	testutil.Eventually(t, func() bool { return s.agentDraining("e2e-box") }, "the agent's heartbeat never said it drains")
	require.Equal(t, "undrain: ok\n", s.mustCLI("undrain", "e2e-box"))
	testutil.Eventually(t, func() bool { return !s.agentDraining("e2e-box") }, "the agent's heartbeat never said it stopped draining")
	out, err = s.brokerCLI("drain", "no-such-agent")
	require.Error(t, err)
	require.Contains(t, out, "agent no-such-agent is not connected")

	// The status command against this known state: paused, priority, two
	// jobs waiting, one of each participant, the agent idle.
	wantStatus := func(out string) {
		t.Helper()
		require.Contains(t, out, "queue PAUSED, policy priority")
		require.Contains(t, out, "waiting 2 (queued 2, dispatched 0)  running 0  GPUs busy 0/1  agents 1")
		require.Regexp(t, `(?m)^default\s+2\s+0\s+0\s+0/1`, out)
		require.Regexp(t, `(?m)^e2e-box\s+gpu0\s+.*\s+idle\s+`, out)
		require.Regexp(t, `(?m)^user001\s+1\s+0`, out)
		require.Regexp(t, `(?m)^user002\s+1\s+0`, out)
	}
	wantStatus(s.mustCLI("status"))

	watch := exec.Command(filepath.Join(binDir, "atelier-broker"), "status", "--watch", "--interval", "200ms",
		"--url", "http://"+s.brokerAt, "--data", s.dataDir)
	watch.Env = cleanEnv()
	var watchOut syncBuffer
	watch.Stdout, watch.Stderr = &watchOut, &watchOut
	require.NoError(t, watch.Start())
	testutil.Eventually(t, func() bool { return strings.Count(watchOut.String(), "Atelier at") >= 3 },
		"status --watch did not redraw: %s", watchOut.String())
	require.NoError(t, watch.Process.Signal(syscall.SIGINT))
	require.NoError(t, watch.Wait(), "status --watch ends cleanly on Ctrl-C")
	frames := strings.Split(watchOut.String(), "\033[H\033[2J")
	require.GreaterOrEqual(t, len(frames), 4, "each redraw clears the screen first")
	for _, f := range frames[1:] {
		if strings.Contains(f, "Atelier at") {
			wantStatus(f)
		}
	}

	// A wrong token is refused and changes nothing.
	out, err = s.brokerCLI("resume", "--token", "not-the-token")
	require.Error(t, err)
	require.Contains(t, out, "admin token required")
	require.Contains(t, s.mustCLI("queues"), "dispatch PAUSED")
	out, err = s.brokerCLI("bump", "user002")
	require.Error(t, err)
	require.Contains(t, out, "atelier-broker bump wants 2 argument(s), got 1: usage: atelier-broker bump USER JOB")

	// Resumed: the bumped job runs first, then the other.
	require.Equal(t, "resume: ok\n", s.mustCLI("resume"))
	s.awaitSuccess(t, map[string]string{b1: "user002", a1: "user001"})
	first, second := s.participant("user002").historyEntry(b1), s.participant("user001").historyEntry(a1)
	require.Less(t, startedAt(t, first), startedAt(t, second), "the bumped job started first")
	out = s.mustCLI("queues")
	require.Contains(t, out, "dispatch running, policy priority, 0 unfinished jobs")
}

// startedAt is the execution_start timestamp of a history entry.
func startedAt(t *testing.T, entry map[string]json.RawMessage) int64 {
	t.Helper()
	m := regexp.MustCompile(`\["execution_start",\s*\{[^}]*"timestamp":\s*(\d+)`).FindSubmatch(entry["status"])
	require.NotNil(t, m, "no execution_start in %s", entry["status"])
	var ts int64
	fmt.Sscan(string(m[1]), &ts)
	return ts
}

// syncBuffer is a bytes.Buffer safe for a process's writes and the test's
// reads.
type syncBuffer struct {
	mu  syncMutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
