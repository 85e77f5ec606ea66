package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// The process runtime spawns atelier-comfysim as "ComfyUI" (the command
// template is --comfy-command; the runtime appends ComfyUI's own flags),
// one per GPU. One of them is killed with SIGKILL while it runs a job: the
// agent sees it exit, starts it again, and the job is retried; every job
// succeeds, none completes twice.
func TestAgentProcessRuntimeRestartsKilledComfyUI(t *testing.T) {
	t.Parallel()
	sim := comfysimBin(t)
	users := []string{"user001", "user002"}
	s := startCore(t, users)
	scratch := filepath.Join(t.TempDir(), "scratch")
	s.startAgent("agent", "--id", "e2e-proc", "--runtime", "process", "--gpus", "2",
		"--comfy-command", sim, "--comfy-args", "--step-delay 20ms --log-format json",
		"--base-port", fmt.Sprint(freePorts(t, 2)), "--scratch", scratch,
		"--retry-delay", "200ms", "--drain-timeout", "10s")
	s.awaitSlots("e2e-proc", 2)

	started := s.awaitLog("agent", func(l logLine) bool { return l.Message == "ComfyUI started" && l.Slot == "gpu0" })
	require.NotZero(t, started.PID)
	// The simulator is a real child process, started with ComfyUI's flags.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", started.PID))
	if err == nil {
		args := strings.Split(string(cmdline), "\x00")
		require.Equal(t, sim, args[0])
		require.Contains(t, args, "--cuda-device")
		require.Contains(t, args, filepath.Join(scratch, "outputs", "gpu0"), "each GPU's ComfyUI has an output folder of its own")
	}
	require.FileExists(t, filepath.Join(scratch, "logs", "comfyui-gpu0.log"))

	ids := s.queueJobs(t, users, 6, 20) // ~0.5 s each
	running := s.awaitLog("agent", func(l logLine) bool { return l.Message == "running job" && l.Slot == "gpu0" })
	time.Sleep(100 * time.Millisecond) // into the sampler
	require.NoError(t, syscall.Kill(started.PID, syscall.SIGKILL))

	s.awaitLog("agent", func(l logLine) bool {
		return l.Message == "ComfyUI started" && l.Slot == "gpu0" && l.PID != started.PID
	})
	s.awaitSuccess(t, ids)
	s.awaitSlots("e2e-proc", 2)
	// A run logs "job done" after its report is recorded: stop the agent
	// (which stops its ComfyUIs) so its log is complete.
	require.NoError(t, s.stopProc("agent"))
	done := completions(s.log("agent"))
	for id := range ids {
		require.Equal(t, 1, done[id], "job %s completed %d times", id, done[id])
	}
	// The job the killed process ran was given back and ran again.
	// On a loaded machine the job seen running may finish before the kill
	// lands; then the next one on gpu0 was running, and that one is given
	// back.
	released := ""
	for _, l := range logLines(s.log("agent")) {
		if l.Message == "releasing job for another attempt" && l.Slot == "gpu0" {
			released = l.Job
		}
	}
	require.NotEmpty(t, released, "the job running on gpu0 (%s or a later one) when its ComfyUI was killed should have been retried", running.Job)
}

// An agent running the process runtime is killed with SIGKILL (no drain,
// no cleanup). Its ComfyUIs die with it (the kernel's parent-death
// signal): no orphan keeps a port or GPU memory. Started again with the
// same flags, the agent brings its ComfyUIs up on the same ports and runs
// jobs.
func TestAgentProcessRuntimeAfterAgentKilled(t *testing.T) {
	t.Parallel()
	sim := comfysimBin(t)
	users := []string{"user001", "user002"}
	s := startCore(t, users)
	base := freePorts(t, 2)
	args := []string{"--id", "e2e-kill9", "--runtime", "process", "--gpus", "2",
		"--comfy-command", sim, "--comfy-args", "--step-delay 5ms --log-format json",
		"--base-port", fmt.Sprint(base), "--scratch", filepath.Join(t.TempDir(), "scratch"),
		"--retry-delay", "200ms", "--drain-timeout", "10s"}
	s.startAgent("agent", args...)
	s.awaitSlots("e2e-kill9", 2)
	first := comfyStarts(s.log("agent"))
	require.Len(t, first, 2)

	cmd := s.procs["agent"]
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	for slot, starts := range first {
		pid := starts[len(starts)-1].PID
		require.Eventually(t, func() bool { return procGone(pid) }, testutil.WaitTimeout(), 20*time.Millisecond,
			"%s's ComfyUI (pid %d) outlived its agent", slot, pid)
	}

	mark := len(s.log("agent"))
	s.startAgent("agent", args...)
	var again map[string][]logLine
	require.Eventually(t, func() bool {
		again = comfyStarts(s.log("agent")[mark:])
		return len(again) == 2
	}, testutil.WaitTimeout(), 20*time.Millisecond, "the agent started its ComfyUIs again")
	for slot, starts := range again {
		require.Equal(t, first[slot][0].Port, starts[0].Port, "%s on the same port", slot)
	}
	ids := s.queueJobs(t, users, 4, 5)
	s.awaitSuccess(t, ids)
	// The ComfyUIs the second agent started are the ones that ran the jobs:
	// none of them exited (a port still held would have made it exit).
	for slot, starts := range comfyStarts(s.log("agent")[mark:]) {
		require.Len(t, starts, 1, "%s's ComfyUI started once", slot)
		require.False(t, procGone(starts[0].PID), "%s's ComfyUI is up", slot)
	}
	require.NotContains(t, s.log("agent")[mark:], "ComfyUI exited")
	require.NoError(t, s.stopProc("agent"))
}

// dockerOK skips the test when no Docker Engine answers.
func dockerOK(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("docker CLI not installed: skipping the docker runtime test")
	}
	if out, err := exec.Command("docker", "info").CombinedOutput(); err != nil {
		t.Skipf("docker info failed, no Docker Engine to test against: %v\n%s", err, tail(string(out), 500))
	}
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	require.NoError(t, err, "docker %s: %s", strings.Join(args, " "), out)
	return strings.TrimSpace(string(out))
}

// The docker runtime against the real Docker Engine: an image built here
// FROM scratch with the simulator (deploy/comfysim.Dockerfile), one
// container per "GPU" (no device request: this machine has no GPU),
// published on 127.0.0.1 (the agent reaches each container at
// 127.0.0.1:<base-port+i>, as on a GPU box; host networking would need
// one ComfyUI port per container inside the container too). The
// containers pass their health check; one is killed with `docker kill`
// while it runs a job and the agent starts it again; every job succeeds
// once. Stopping the agent removes its containers; the test removes its
// image.
func TestAgentDockerRuntime(t *testing.T) {
	dockerOK(t)
	t.Parallel()
	image, agentID := dockerSimImage(t)

	users := []string{"user001", "user002"}
	s := startCore(t, users)
	s.startAgent("agent", "--id", agentID, "--runtime", "docker", "--gpus", "2",
		"--docker-image", image, "--docker-no-gpu",
		"--docker-health-cmd", "/atelier-healthcheck healthcheck --url http://127.0.0.1:8188/system_stats",
		"--docker-health-interval", "1s", "--comfy-args", "--step-delay 20ms",
		"--base-port", fmt.Sprint(freePorts(t, 2)), "--scratch", filepath.Join(t.TempDir(), "scratch"),
		"--retry-delay", "200ms", "--drain-timeout", "10s")
	s.awaitSlots(agentID, 2)

	names := []string{"atelier-" + agentID + "-gpu0", "atelier-" + agentID + "-gpu1"}
	for _, n := range names {
		require.Equal(t, agentID, docker(t, "inspect", "--format", `{{index .Config.Labels "atelier.agent"}}`, n))
		require.Eventually(t, func() bool {
			out, err := exec.Command("docker", "inspect", "--format", "{{.State.Health.Status}}", n).Output()
			return err == nil && strings.TrimSpace(string(out)) == "healthy"
		}, testutil.WaitTimeout(), 200*time.Millisecond, "container %s never healthy", n)
	}

	ids := s.queueJobs(t, users, 6, 20) // ~0.5 s each
	running := s.awaitLog("agent", func(l logLine) bool { return l.Message == "running job" && l.Slot == "gpu0" })
	firstStart := docker(t, "inspect", "--format", "{{.State.StartedAt}}", names[0])
	time.Sleep(100 * time.Millisecond)
	docker(t, "kill", names[0])

	s.awaitLog("agent", func(l logLine) bool { return l.Message == "ComfyUI container exited" && l.Slot == "gpu0" })
	require.Eventually(t, func() bool {
		out, err := exec.Command("docker", "inspect", "--format", "{{.State.Running}} {{.State.StartedAt}}", names[0]).Output()
		f := strings.Fields(string(out))
		return err == nil && len(f) == 2 && f[0] == "true" && f[1] != firstStart
	}, testutil.WaitTimeout(), 100*time.Millisecond, "the killed container was not started again")

	s.awaitSuccess(t, ids)
	// Stopping the agent removes its containers (and completes its log).
	require.NoError(t, s.stopProc("agent"))
	require.Empty(t, docker(t, "ps", "-aq", "--filter", "label=atelier.agent="+agentID))
	done := completions(s.log("agent"))
	for id := range ids {
		require.Equal(t, 1, done[id], "job %s completed %d times", id, done[id])
	}
	// On a loaded machine the job seen running may finish before the kill
	// lands; then the next one on gpu0 was running, and that one is given
	// back.
	released := ""
	for _, l := range logLines(s.log("agent")) {
		if l.Message == "releasing job for another attempt" && l.Slot == "gpu0" {
			released = l.Job
		}
	}
	require.NotEmpty(t, released, "the job running on gpu0 (%s or a later one) when its container was killed should have been retried", running.Job)
}

// dockerSimImage builds the simulator image for one test (FROM scratch,
// deploy/comfysim.Dockerfile) and returns it with an agent id unique to
// the test. Cleanup removes what the agent left and the image.
func dockerSimImage(t *testing.T) (image, agentID string) {
	t.Helper()
	sim := comfysimBin(t)
	// The build context: the static binaries under bin/.
	ctxDir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(ctxDir, "bin"), 0o755))
	for src, dst := range map[string]string{sim: "atelier-comfysim", staticAgentBin(t): "atelier-agent"} {
		data, err := os.ReadFile(src)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "bin", dst), data, 0o755))
	}
	run := strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	image = "atelier-comfysim-e2e:" + run
	agentID = "e2e-docker-" + run
	t.Cleanup(func() {
		// Whatever the agent left (it removes its containers when it
		// stops), then the image.
		out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=atelier.agent="+agentID).Output()
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("docker", "rm", "-f", id).Run()
		}
		_ = exec.Command("docker", "rmi", "-f", image).Run()
	})
	docker(t, "build", "-q", "-t", image, "--label", "atelier.test=e2e",
		"-f", filepath.Join(repoRoot(), "deploy", "comfysim.Dockerfile"), ctxDir)
	return image, agentID
}

// The hang watchdog through the docker runtime and the real engine: a
// ComfyUI container whose prompt freezes mid-sampler (the simulator's hang
// fault, set over its published port) sends no event for --event-timeout;
// the agent gives the job back, restarts the container through the Engine
// API, and the slot comes back. Every job succeeds exactly once, checked
// once everything is quiet (the agent stopped, its log complete).
func TestAgentDockerRuntimeRestartsHungComfyUI(t *testing.T) {
	dockerOK(t)
	t.Parallel()
	image, agentID := dockerSimImage(t)
	users := []string{"user001", "user002"}
	s := startCore(t, users)
	base := freePorts(t, 2)
	s.startAgent("agent", "--id", agentID, "--runtime", "docker", "--gpus", "2",
		"--docker-image", image, "--docker-no-gpu",
		"--docker-health-cmd", "/atelier-healthcheck healthcheck --url http://127.0.0.1:8188/system_stats",
		"--docker-health-interval", "1s", "--comfy-args", "--step-delay 20ms",
		"--base-port", fmt.Sprint(base), "--scratch", filepath.Join(t.TempDir(), "scratch"),
		"--event-timeout", "2s", "--retry-delay", "200ms", "--drain-timeout", "10s")
	s.awaitSlots(agentID, 2)
	name := "atelier-" + agentID + "-gpu1"
	firstStart := docker(t, "inspect", "--format", "{{.State.StartedAt}}", name)

	// gpu1's ComfyUI freezes in the third sampler step of its next prompt.
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/sim/fault", base+1), "application/json",
		strings.NewReader(`{"kind": "hang", "node": "KSampler", "after": 2, "count": 1}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	ids := s.queueJobs(t, users, 6, 20) // ~0.5 s each
	hung := s.awaitLog("agent", func(l logLine) bool {
		return l.Message == "watchdog: ComfyUI is stuck" && l.Slot == "gpu1"
	})
	s.awaitLog("agent", func(l logLine) bool { return l.Message == "restarting ComfyUI" && l.Slot == "gpu1" })
	require.Eventually(t, func() bool {
		out, err := exec.Command("docker", "inspect", "--format", "{{.State.Running}} {{.State.StartedAt}}", name).Output()
		f := strings.Fields(string(out))
		return err == nil && len(f) == 2 && f[0] == "true" && f[1] != firstStart
	}, testutil.WaitTimeout(), 100*time.Millisecond, "the agent did not restart the hung container")

	s.awaitSuccess(t, ids)
	s.awaitSlots(agentID, 2)
	require.NoError(t, s.stopProc("agent"))
	done := completions(s.log("agent"))
	for id := range ids {
		require.Equal(t, 1, done[id], "job %s completed %d times", id, done[id])
	}
	require.Equal(t, 1, done[hung.Job], "the hung job ran again elsewhere and completed once")
}

// The GPUs of one box save a participant's outputs under the same prefix
// at the same time. ComfyUI numbers a file by scanning its output folder,
// so two ComfyUIs sharing one folder pick the same name and one job's
// picture overwrites the other's: each job must get back its own image
// (here a solid colour of its own), under a name no other job has.
func TestAgentProcessRuntimeGPUsDoNotShareOutputNames(t *testing.T) {
	t.Parallel()
	sim := comfysimBin(t)
	s := startCore(t, []string{"user001"})
	s.startAgent("agent", "--id", "e2e-outs", "--runtime", "process", "--gpus", "2",
		"--comfy-command", sim, "--comfy-args", "--step-delay 1ms --log-format json",
		"--base-port", fmt.Sprint(freePorts(t, 2)), "--scratch", filepath.Join(t.TempDir(), "scratch"),
		"--retry-delay", "200ms", "--drain-timeout", "10s")
	s.awaitSlots("e2e-outs", 2)

	p := s.participant("user001")
	wf := workflow(t, "noweights.json")
	colors := map[string]int{}
	ids := map[string]string{}
	for i := range 16 {
		c := 0x0f0f0f * (i + 1)
		prompt := bytes.Replace(wf, []byte(`"color": 3355647`), fmt.Appendf(nil, `"color": %d`, c), 1)
		require.NotEqual(t, wf, prompt)
		id := p.queue(prompt, "")
		colors[id], ids[id] = c, "user001"
	}
	s.awaitSuccess(t, ids)

	owner := map[string]string{}
	for id, c := range colors {
		entry := p.awaitHistory(id, testutil.WaitTimeout())
		var outputs map[string]struct {
			Images []outputImage `json:"images"`
		}
		require.NoError(t, json.Unmarshal(entry["outputs"], &outputs))
		require.Len(t, outputs["5"].Images, 1)
		img := outputs["5"].Images[0]
		require.Empty(t, owner[img.Filename], "jobs %s and %s both name %s", owner[img.Filename], id, img.Filename)
		owner[img.Filename] = id
		code, body := p.view(img)
		require.Equal(t, http.StatusOK, code)
		decoded, err := png.Decode(bytes.NewReader(body))
		require.NoError(t, err)
		r, g, b, _ := decoded.At(64, 48).RGBA()
		// The workflow inverts the colour before saving it (the blur and
		// the scaling may round by one); the jobs' colours are 15 apart.
		want := [3]int{255 - c>>16&0xff, 255 - c>>8&0xff, 255 - c&0xff}
		got := [3]int{int(r >> 8), int(g >> 8), int(b >> 8)}
		for i := range want {
			require.InDelta(t, want[i], got[i], 2, "job %s got another job's picture (%s): %v, want %v", id, img.Filename, got, want)
		}
	}
}
