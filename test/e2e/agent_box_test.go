package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// `atelier-agent prepare`, as the systemd unit runs it before every start:
// the scratch layout, the users' folders and a ComfyUI checkout's input/
// and output/ as links into it; again is fine; a checkout folder with
// files in it is left alone and the command says what to do.
func TestAgentPrepareCommand(t *testing.T) {
	t.Parallel()
	scratch := filepath.Join(t.TempDir(), "scratch")
	comfy := filepath.Join(t.TempDir(), "ComfyUI")
	require.NoError(t, os.MkdirAll(filepath.Join(comfy, "output"), 0o755))
	prepare := func(env ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "atelier-agent"), "prepare", "--comfy-dir", comfy)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for range 2 {
		// Settings from the unit's environment file.
		out, err := prepare("ATELIER_SCRATCH="+scratch, "ATELIER_USERS=user001, user002")
		require.NoError(t, err, out)
		require.Contains(t, out, "scratch ready")
	}
	for _, d := range []string{"inputs/user001", "inputs/user002", "outputs/user001", "outputs/user002", "temp", "cache/inputs"} {
		require.DirExists(t, filepath.Join(scratch, d))
	}
	for link, target := range map[string]string{"input": "inputs", "output": "outputs"} {
		got, err := os.Readlink(filepath.Join(comfy, link))
		require.NoError(t, err)
		require.Equal(t, filepath.Join(scratch, target), got)
	}

	require.NoError(t, os.Remove(filepath.Join(comfy, "output")))
	require.NoError(t, os.MkdirAll(filepath.Join(comfy, "output"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(comfy, "output", "keep.png"), []byte("x"), 0o644))
	out, err := prepare("ATELIER_SCRATCH=" + scratch)
	require.Error(t, err)
	require.Contains(t, out, "is a folder with files; move them to")
	require.FileExists(t, filepath.Join(comfy, "output", "keep.png"))

	out, err = prepare("ATELIER_SCRATCH="+scratch, "ATELIER_USERS=../etc")
	require.Error(t, err, out)
}

// startAgentEnv starts the agent process ("agent") with extra environment.
func (s *system) startAgentEnv(env []string, args ...string) {
	s.t.Helper()
	args = append(args, "--nats-url", s.natsURL)
	cmd := exec.Command(filepath.Join(binDir, "atelier-agent"), args...)
	cmd.Env = append(os.Environ(), env...)
	buf := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = syncWriter{&s.mu, buf}, syncWriter{&s.mu, buf}
	require.NoError(s.t, cmd.Start())
	s.procs["agent"], s.logs["agent"], s.args["agent"] = cmd, buf, append([]string{"atelier-agent"}, args...)
}

// fakeNvidiaSMI writes an nvidia-smi that answers the agent's query with
// the given lines, into a folder to put first on PATH.
func fakeNvidiaSMI(t *testing.T, lines ...string) string {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\n# fake nvidia-smi: answers --query-gpu=... --format=csv,noheader,nounits\ncat <<'EOF'\n" +
		strings.Join(lines, "\n") + "\nEOF\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nvidia-smi"), []byte(script), 0o755))
	return dir
}

// GPUs given explicitly (--gpus 1,3 on an 8-GPU box) still get their
// memory and utilisation into the heartbeat, from nvidia-smi on PATH (here
// a script printing a real query's output): each slot shows its own GPU's
// readings and name.
func TestAgentGPUStatsWithExplicitGPUs(t *testing.T) {
	t.Parallel()
	sim := comfysimBin(t)
	s := startCore(t, []string{"user001"})
	smi := fakeNvidiaSMI(t,
		"0, NVIDIA H200, GPU-3c9a3f6e-8d2b-4a51-9f7e-0b1c2d3e4f50, 143771, 81526, 98",
		"1, NVIDIA H200, GPU-7a1e5b2c-4f6d-4e83-a9b0-1c2d3e4f5a61, 143771, 1024, 7",
		"2, NVIDIA H200, GPU-0e4d8c6b-2a1f-4b95-8c7d-2d3e4f5a6b72, 143771, 4, 0",
		"3, NVIDIA H200, GPU-9b2f7d1a-6c3e-4d07-b1a2-3e4f5a6b7c83, 143771, 120311, 100",
	)
	s.startAgentEnv([]string{"PATH=" + smi + string(os.PathListSeparator) + os.Getenv("PATH")},
		"--id", "e2e-smi", "--runtime", "process", "--gpus", "1,3",
		"--comfy-command", sim, "--comfy-args", "--step-delay 1ms --log-format json",
		"--base-port", fmt.Sprint(freePorts(t, 2)), "--scratch", filepath.Join(t.TempDir(), "scratch"))
	s.awaitSlots("e2e-smi", 2)
	want := map[string]struct {
		used int64
		util float64
	}{"gpu1": {1024, 7}, "gpu3": {120311, 100}}
	var last []wire.SlotStatus
	require.Eventually(t, func() bool {
		var st struct {
			Agents []wire.Heartbeat `json:"agents"`
		}
		if getJSON("http://"+s.brokerAt+"/api/status", "", "", &st) != nil {
			return false
		}
		for _, hb := range st.Agents {
			if hb.Agent != "e2e-smi" {
				continue
			}
			last = hb.Slots
			ok := len(hb.Slots) == 2
			for _, sl := range hb.Slots {
				w, known := want[sl.ID]
				ok = ok && known && sl.GPU == "NVIDIA H200" && sl.VRAMTotal == 143771<<20 &&
					sl.VRAMFree == (143771-w.used)<<20 && sl.Utilization == w.util
			}
			return ok
		}
		return false
	}, testutil.WaitTimeout(), 50*time.Millisecond, "per-slot GPU readings from nvidia-smi: %+v", &last)
}
