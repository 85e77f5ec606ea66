package process

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testport"
	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/agent/gpu"
	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

var (
	simBinOnce sync.Once
	simBinPath string
	simBinErr  error
)

// simBinary builds the atelier-comfysim binary once: the "ComfyUI" the
// process runtime starts in these tests.
func simBinary(t *testing.T) string {
	t.Helper()
	simBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "atelier-agent-test-bin-")
		if err != nil {
			simBinErr = err
			return
		}
		simBinPath = filepath.Join(dir, "atelier-comfysim")
		out, err := exec.Command("go", "build", "-o", simBinPath, "../../../../comfysim").CombinedOutput()
		if err != nil {
			simBinErr = fmt.Errorf("build atelier-comfysim: %v\n%s", err, out)
		}
	})
	require.NoError(t, simBinErr)
	return simBinPath
}

// A ComfyUI an earlier run of the agent left behind (its pid file names
// it, and it holds the slot's port) is stopped when the process runtime
// starts: the new ComfyUI comes up on the same port. A pid file whose pid
// now names another process leaves that process alone.
func TestProcessStopsLeftoverComfyUI(t *testing.T) {
	t.Parallel()
	sim := simBinary(t)
	dir := t.TempDir()
	// gpu0's port and gpu1's after it, from below the ephemeral range:
	// free until the ComfyUIs bind them.
	port := testport.Consecutive(t, 2)
	p := &Runtime{
		Command: []string{sim}, ExtraArgs: []string{"--step-delay", "1ms"},
		GPUs:     []gpu.GPU{{Index: 0, Name: "GPU 0"}, {Index: 1, Name: "GPU 1"}},
		BasePort: port, InputDir: filepath.Join(dir, "in"), OutputRoot: filepath.Join(dir, "out"),
		TempRoot: filepath.Join(dir, "temp"), LogDir: filepath.Join(dir, "logs"),
		StopGrace: 2 * time.Second, Logger: zerolog.Nop(),
	}
	require.NoError(t, os.MkdirAll(p.LogDir, 0o755))

	// The leftover: a ComfyUI on gpu0's port, recorded in gpu0's pid file
	// as the runtime records its own.
	left := exec.Command(sim, "--listen", "127.0.0.1", "--port", strconv.Itoa(port), "--base-directory", filepath.Join(dir, "left"))
	left.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, left.Start())
	leftDone := make(chan error, 1)
	go func() { leftDone <- left.Wait() }()
	t.Cleanup(func() { _ = left.Process.Kill() })
	leftURL := "http://127.0.0.1:" + strconv.Itoa(port)
	testutil.EventuallyNoError(t, func() error {
		_, err := comfyclient.New(leftURL, nil).SystemStats(t.Context())
		return err
	}, "the leftover to answer")
	require.NoError(t, p.writePID("gpu0", left.Process.Pid))
	// gpu1's pid file names a pid that now belongs to another process
	// (this test), started at another time.
	require.NoError(t, os.WriteFile(p.pidFile("gpu1"), fmt.Appendf(nil, "%d 1\n", os.Getpid()), 0o644))

	eps, err := p.Start(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Stop(context.Background()) })
	testutil.WaitClosed(t, leftDone, "the leftover ComfyUI to be stopped")
	require.Equal(t, leftURL, eps[0].URL, "same port as before")
	for _, ep := range eps {
		testutil.EventuallyNoError(t, func() error {
			_, err := comfyclient.New(ep.URL, nil).SystemStats(t.Context())
			return err
		}, "%s's new ComfyUI to answer", ep.Slot)
	}
	pid, _, err := readPIDFile(p.pidFile("gpu0"))
	require.NoError(t, err)
	require.NotEqual(t, left.Process.Pid, pid, "the pid file names the new process")
	require.NoError(t, p.Stop(t.Context()))
	require.NoFileExists(t, p.pidFile("gpu0"), "a stopped ComfyUI's pid file is removed")
}
