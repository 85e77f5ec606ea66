// Package e2e tests Atelier as its users meet it: the three binaries run as
// separate processes, participants talk HTTP and WebSocket to the proxy.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testport"
	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/stretchr/testify/require"
)

// binDir holds the binaries built once for the whole package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "atelier-e2e-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
		root := repoRoot()
		for name, pkg := range map[string]string{
			"atelier-broker": "./broker", "atelier-proxy": "./frontend-proxy",
			"atelier-agent": "./agent", "atelier-devstack": "./tools/devstack",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", name, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

// freeAddr is a loopback address for a process to listen on, with a port
// from below the kernel's ephemeral range (internal/testport): one found
// free with port 0 may be given to another listener, or taken by an
// outgoing connection, before the process binds it.
func freeAddr(t *testing.T) string {
	t.Helper()
	return testport.Addr(t)
}

// system is a running Atelier made of real processes.
type system struct {
	t        *testing.T
	dataDir  string
	natsURL  string
	brokerAt string
	proxyURL string
	password string
	procs    map[string]*exec.Cmd
	args     map[string][]string
	logs     map[string]*bytes.Buffer
	mu       sync.Mutex
}

type systemOpts struct {
	users []string
	gpus  int
	// stepDelay slows simulated model nodes.
	stepDelay time.Duration
	// brokerArgs are extra flags of atelier-broker serve.
	brokerArgs []string
}

func startSystem(t *testing.T, o systemOpts) *system {
	t.Helper()
	if o.gpus == 0 {
		o.gpus = 2
	}
	if o.stepDelay == 0 {
		o.stepDelay = 5 * time.Millisecond
	}
	s := &system{
		t: t, dataDir: filepath.Join(t.TempDir(), "data"), password: "pw-" + t.Name(),
		procs: map[string]*exec.Cmd{}, args: map[string][]string{}, logs: map[string]*bytes.Buffer{},
	}
	natsAddr := freeAddr(t)
	s.natsURL = "nats://" + natsAddr
	s.brokerAt = freeAddr(t)
	proxyAt := freeAddr(t)
	s.proxyURL = "http://" + proxyAt

	// Participants are created with the broker's own CLI.
	for _, u := range o.users {
		out, err := exec.Command(filepath.Join(binDir, "atelier-broker"), "user", "add",
			"--data", s.dataDir, "--id", u, "--password", s.password).CombinedOutput()
		require.NoError(t, err, string(out))
	}

	s.start("broker", "atelier-broker", append([]string{"serve", "--data", s.dataDir, "--nats-listen", natsAddr, "--http", s.brokerAt}, o.brokerArgs...)...)
	s.awaitHealthy("http://" + s.brokerAt + "/healthz")
	s.start("proxy", "atelier-proxy", "--data", s.dataDir, "--listen", proxyAt, "--nats-url", s.natsURL)
	s.awaitHealthy(s.proxyURL + "/healthz")
	s.start("agent", "atelier-agent", "--id", "e2e-box", "--runtime", "simulated", "--gpus", fmt.Sprint(o.gpus),
		"--sim-dir", filepath.Join(t.TempDir(), "sim"), "--sim-step-delay", o.stepDelay.String(), "--nats-url", s.natsURL)
	s.awaitAgent()
	t.Cleanup(s.stop)
	return s
}

func (s *system) start(name, bin string, args ...string) {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	buf := s.logs[name]
	if buf == nil {
		buf = &bytes.Buffer{}
	}
	cmd.Stdout, cmd.Stderr = syncWriter{&s.mu, buf}, syncWriter{&s.mu, buf}
	require.NoError(s.t, cmd.Start())
	s.procs[name], s.logs[name], s.args[name] = cmd, buf, append([]string{bin}, args...)
}

// killBroker ends the broker with SIGKILL (no chance to clean up) and
// starts it again on the same data directory and ports.
func (s *system) killBroker() {
	s.t.Helper()
	cmd := s.procs["broker"]
	require.NoError(s.t, cmd.Process.Kill())
	_ = cmd.Wait()
	args := s.args["broker"]
	s.start("broker", args[0], args[1:]...)
	s.awaitHealthy("http://" + s.brokerAt + "/healthz")
}

type syncWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// stop ends the processes with SIGTERM, agent first; on failure it prints
// their logs.
func (s *system) stop() {
	for _, name := range []string{"agent", "proxy", "broker"} {
		cmd := s.procs[name]
		if cmd == nil || cmd.ProcessState != nil {
			continue
		}
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				s.t.Errorf("%s exited uncleanly: %v", name, err)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			s.t.Errorf("%s did not stop within 20s of SIGINT", name)
		}
	}
	if s.t.Failed() {
		s.mu.Lock()
		defer s.mu.Unlock()
		dir := filepath.Join(repoRoot(), "test", "e2e", "artifacts", strings.ReplaceAll(s.t.Name(), "/", "_"))
		_ = os.MkdirAll(dir, 0o755)
		for name, buf := range s.logs {
			path := filepath.Join(dir, name+".log")
			_ = os.WriteFile(path, buf.Bytes(), 0o644)
			s.t.Logf("---- %s log (whole log in %s) ----\n%s", name, path, tail(buf.String(), 4000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func (s *system) awaitHealthy(url string) {
	s.t.Helper()
	require.Eventually(s.t, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, testutil.WaitTimeout(), 50*time.Millisecond, "not healthy: %s", url)
}

// awaitAgent waits until the broker knows the agent and its catalog.
func (s *system) awaitAgent() {
	s.t.Helper()
	require.Eventually(s.t, func() bool {
		var st struct {
			Agents   []json.RawMessage `json:"agents"`
			Catalogs int               `json:"catalogs"`
		}
		return getJSON("http://"+s.brokerAt+"/api/status", "", "", &st) == nil && len(st.Agents) > 0 && st.Catalogs > 0
	}, testutil.WaitTimeout(), 50*time.Millisecond, "agent never joined")
}

func getJSON(url, user, pass string, v any) error {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// scanLines returns the lines of r as they come.
func scanLines(r io.Reader) <-chan string {
	ch := make(chan string, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}

type syncMutex = sync.Mutex
