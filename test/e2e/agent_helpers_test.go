package e2e

// Helpers for the agent's end-to-end tests (agent_*_test.go): a system
// without the default simulated agent, agents started with any flags,
// the simulator binary, and reading the agents' JSON logs.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testport"
	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// startCore starts the broker and the proxy as startSystem does, but no
// agent: the test starts its own with startAgent.
func startCore(t *testing.T, users []string, brokerArgs ...string) *system {
	t.Helper()
	s := &system{
		t: t, dataDir: filepath.Join(t.TempDir(), "data"), password: "pw-" + t.Name(),
		procs: map[string]*exec.Cmd{}, args: map[string][]string{}, logs: map[string]*bytes.Buffer{},
	}
	natsAddr := freeAddr(t)
	s.natsURL = "nats://" + natsAddr
	s.brokerAt = freeAddr(t)
	proxyAt := freeAddr(t)
	s.proxyURL = "http://" + proxyAt
	for _, u := range users {
		out, err := exec.Command(filepath.Join(binDir, "atelier-broker"), "user", "add",
			"--data", s.dataDir, "--id", u, "--password", s.password).CombinedOutput()
		require.NoError(t, err, string(out))
	}
	// stop ends "agent", "proxy" and "broker" and keeps the logs of all.
	t.Cleanup(s.stop)
	s.start("broker", "atelier-broker", append([]string{"serve", "--data", s.dataDir, "--nats-listen", natsAddr, "--http", s.brokerAt}, brokerArgs...)...)
	s.awaitHealthy("http://" + s.brokerAt + "/healthz")
	s.start("proxy", "atelier-proxy", "--data", s.dataDir, "--listen", proxyAt, "--nats-url", s.natsURL)
	s.awaitHealthy(s.proxyURL + "/healthz")
	return s
}

// startAgent starts an atelier-agent process under name ("agent" is
// stopped by system.stop; others are stopped with SIGTERM before it).
func (s *system) startAgent(name string, args ...string) {
	s.t.Helper()
	s.start(name, "atelier-agent", append(args, "--nats-url", s.natsURL)...)
	if name != "agent" {
		s.t.Cleanup(func() {
			if err := s.stopProc(name); err != nil {
				s.t.Errorf("%s: %v", name, err)
			}
		})
	}
}

// stopProc sends SIGTERM (what systemd and docker send) to the named
// process and waits for it to exit. It returns an error if the exit
// status is not 0 or it does not exit within d (it is then killed).
func (s *system) stopProc(name string) error { return s.stopProcWithin(name, testutil.WaitTimeout()) }

// stopProcWithin is stopProc with its own bound (a drain that may take
// that long).
func (s *system) stopProcWithin(name string, d time.Duration) error {
	cmd := s.procs[name]
	if cmd == nil || cmd.ProcessState != nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("did not exit within %s of SIGTERM", d)
	}
}

// log returns what the named process logged so far.
func (s *system) log(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.logs[name]; b != nil {
		return b.String()
	}
	return ""
}

// awaitSlots waits until the broker's status shows agent id with n
// slots, all idle.
func (s *system) awaitSlots(id string, n int) {
	s.t.Helper()
	require.Eventually(s.t, func() bool {
		var st struct {
			Agents   []wire.Heartbeat `json:"agents"`
			Catalogs int              `json:"catalogs"`
		}
		if getJSON("http://"+s.brokerAt+"/api/status", "", "", &st) != nil || st.Catalogs == 0 {
			return false
		}
		for _, hb := range st.Agents {
			if hb.Agent != id || len(hb.Slots) != n {
				continue
			}
			for _, sl := range hb.Slots {
				if sl.State != wire.SlotIdle {
					return false
				}
			}
			return true
		}
		return false
	}, testutil.WaitTimeout(), 50*time.Millisecond, "agent %s never had %d idle slots", id, n)
}

var (
	comfysimOnce sync.Once
	comfysimErr  error
)

// comfysimBin builds the simulator binary (static, for the FROM scratch
// image too) once for the package.
func comfysimBin(t *testing.T) string {
	t.Helper()
	path := filepath.Join(binDir, "atelier-comfysim")
	comfysimOnce.Do(func() { comfysimErr = buildStatic(path, "./comfysim") })
	require.NoError(t, comfysimErr)
	return path
}

var (
	staticAgentOnce sync.Once
	staticAgentErr  error
)

// staticAgentBin builds an atelier-agent for the FROM scratch image (its
// health check).
func staticAgentBin(t *testing.T) string {
	t.Helper()
	path := filepath.Join(binDir, "atelier-agent-static")
	staticAgentOnce.Do(func() { staticAgentErr = buildStatic(path, "./agent") })
	require.NoError(t, staticAgentErr)
	return path
}

// buildStatic builds a binary that runs in a FROM scratch image: no cgo,
// and the nodynamic tag, without which github.com/gen2brain/webp (through
// comfyview) links the binary dynamically to dlopen libwebp even with
// CGO_ENABLED=0, and it cannot start without a loader.
func buildStatic(path, pkg string) error {
	cmd := exec.Command("go", "build", "-tags", "nodynamic", "-o", path, pkg)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

// freePorts finds n consecutive free loopback ports (the process and
// docker runtimes give slot i the port base+i), from below the kernel's
// ephemeral range: a port found free there stays free until the runtime
// binds it (see internal/testport).
func freePorts(t *testing.T, n int) int {
	t.Helper()
	return testport.Consecutive(t, n)
}

// logLine is the part of an agent's JSON log line the tests read.
type logLine struct {
	Message string `json:"message"`
	Job     string `json:"job"`
	Slot    string `json:"slot"`
	Result  string `json:"result"`
	Reason  string `json:"reason"`
	PID     int    `json:"pid"`
	Port    int    `json:"port"`
}

// logLines parses a JSON log.
func logLines(log string) []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// completions counts, per job, the "job done" lines with result
// succeeded across the given logs: a job the GPU side completed twice
// shows 2.
func completions(logs ...string) map[string]int {
	done := map[string]int{}
	for _, log := range logs {
		for _, l := range logLines(log) {
			if l.Message == "job done" && l.Result == "succeeded" {
				done[l.Job]++
			}
		}
	}
	return done
}

// queueJobs queues n txt2img jobs with steps sampler steps, spread over
// the users, and returns job → user.
func (s *system) queueJobs(t *testing.T, users []string, n, steps int) map[string]string {
	t.Helper()
	wf := workflow(t, "txt2img.json")
	wf = bytes.Replace(wf, []byte(`"steps": 20`), fmt.Appendf(nil, `"steps": %d`, steps), 1)
	ids := map[string]string{}
	for i := range n {
		u := users[i%len(users)]
		prompt := bytes.Replace(wf, []byte(`"seed": 424242`), fmt.Appendf(nil, `"seed": %d`, 1000+i), 1)
		ids[s.participant(u).queue(prompt, "")] = u
	}
	require.Len(t, ids, n)
	return ids
}

// awaitSuccess waits until every job's history entry, read through the
// proxy as its participant, says success. It wakes on the jobs' records in
// JOBS reaching a final state, and fails when none did for WaitTimeout: the
// bound is on progress, not on how many jobs there are.
func (s *system) awaitSuccess(t *testing.T, ids map[string]string) {
	t.Helper()
	pending, bad := map[string]string{}, map[string]string{}
	for id, u := range ids {
		pending[id] = u
	}
	w, err := s.jobsKV().WatchAll(context.Background())
	require.NoError(t, err)
	defer func() { _ = w.Stop() }()
	idle := time.NewTimer(testutil.WaitTimeout())
	defer idle.Stop()
	for len(pending) > 0 {
		var e jetstream.KeyValueEntry
		select {
		case e = <-w.Updates():
		case <-idle.C:
			t.Fatalf("no job ended for %s; without a history entry: %v", testutil.WaitTimeout(), pending)
		}
		var r wire.JobRecord
		if e == nil || json.Unmarshal(e.Value(), &r) != nil || !r.State.Final() || pending[r.ID] == "" {
			continue // the end of the initial values, or not one of ours yet
		}
		u := pending[r.ID]
		var st string
		testutil.Eventually(t, func() bool {
			var ok bool
			st, ok = s.historyStatus(u, r.ID)
			return ok
		}, "job %s ended (%s) but has no history entry", r.ID, r.State)
		if st != "success" {
			bad[r.ID] = st
		}
		delete(pending, r.ID)
		idle.Reset(testutil.WaitTimeout())
	}
	require.Empty(t, bad, "jobs whose history entry is not a success")
}

// historyStatus is the status_str of job id's history entry as its
// participant u reads it through the proxy (false: no entry yet).
func (s *system) historyStatus(u, id string) (string, bool) {
	var h map[string]struct {
		Status struct {
			StatusStr string `json:"status_str"`
		} `json:"status"`
	}
	code, body := s.participant(u).do(http.MethodGet, "/history/"+id, nil)
	if code != http.StatusOK || json.Unmarshal(body, &h) != nil {
		return "", false
	}
	e, ok := h[id]
	return e.Status.StatusStr, ok
}

// awaitLog waits until the named process logged a line for which match
// holds, and returns it.
func (s *system) awaitLog(name string, match func(logLine) bool) logLine {
	s.t.Helper()
	var found logLine
	require.Eventually(s.t, func() bool {
		for _, l := range logLines(s.log(name)) {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	}, testutil.WaitTimeout(), 20*time.Millisecond, "%s never logged the expected line", name)
	return found
}

// procGone reports whether pid no longer names a live process (a zombie
// nobody reaped counts as gone: it holds no port and no GPU memory).
func procGone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// comfyStarts returns the "ComfyUI started" lines of a process
// runtime's log, per slot, in order.
func comfyStarts(log string) map[string][]logLine {
	out := map[string][]logLine{}
	for _, l := range logLines(log) {
		if l.Message == "ComfyUI started" {
			out[l.Slot] = append(out[l.Slot], l)
		}
	}
	return out
}
