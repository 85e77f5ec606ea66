package e2e

import (
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
)

// What `make run` starts (the devstack), followed by the README's demo
// commands, works on a fresh data directory; Ctrl-C stops it cleanly.
func TestMakeRunAndReadmeDemo(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	proxyAt, brokerAt, natsAt := freeAddr(t), freeAddr(t), freeAddr(t)
	cmd := exec.Command(filepath.Join(binDir, "atelier-devstack"), "--bin", binDir,
		"--data", filepath.Join(work, "data"), "--proxy-listen", proxyAt, "--broker-http", brokerAt,
		"--nats-listen", natsAt, "--log-format", "json")
	cmd.Dir = work
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &syncWriterBuilder{b: &stderr}
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("devstack stderr:\n%s", tail(stderr.String(), 8000))
		}
	})

	got := map[string]string{}
	lines := scanLines(stdout)
	deadline := time.After(testutil.WaitTimeout())
	for len(got) < 3 {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "devstack ended before printing its addresses")
			for _, k := range []string{"proxy", "dashboard", "password"} {
				if v, ok := strings.CutPrefix(l, k+": "); ok {
					got[k] = strings.TrimSpace(v)
				}
			}
		case <-deadline:
			t.Fatalf("devstack printed no proxy/dashboard/password lines within %s", testutil.WaitTimeout())
		}
	}
	require.Equal(t, "http://"+proxyAt, got["proxy"])
	require.Equal(t, "http://"+brokerAt, got["dashboard"])
	pw, err := os.ReadFile(filepath.Join(work, "data", "meta", "demo-password"))
	require.NoError(t, err)
	require.Equal(t, strings.TrimSpace(string(pw)), got["password"])

	// The demo participant can work once the agent has joined.
	s := &system{t: t, brokerAt: brokerAt}
	s.awaitAgent()

	// Run the README's demo block as written, against this run's ports.
	readme, err := os.ReadFile(filepath.Join(repoRoot(), "README.md"))
	require.NoError(t, err)
	block := regexp.MustCompile("(?s)<!-- demo:begin -->\\s*```sh\\n(.*?)```\\s*<!-- demo:end -->").FindSubmatch(readme)
	require.NotNil(t, block, "README has no demo block")
	script := strings.ReplaceAll(string(block[1]), "http://127.0.0.1:8190", "http://"+proxyAt)
	require.NoError(t, os.Symlink(filepath.Join(repoRoot(), "examples"), filepath.Join(work, "examples")))
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitTimeout())
	defer cancel()
	demo := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	demo.Dir = work
	out, err := demo.CombinedOutput()
	require.NoError(t, err, "README demo failed:\n%s", out)
	require.Contains(t, string(out), "queued ")

	f, err := os.Open(filepath.Join(work, "result.png"))
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	require.Equal(t, 128, img.Bounds().Dx())

	// Ctrl-C stops everything cleanly.
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	select {
	case err := <-exited:
		require.NoError(t, err, "devstack exit")
	case <-time.After(testutil.WaitTimeout()):
		t.Fatalf("devstack did not stop within %s of Ctrl-C", testutil.WaitTimeout())
	}
}

type syncWriterBuilder struct {
	mu syncMutex
	b  *strings.Builder
}

func (w *syncWriterBuilder) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
