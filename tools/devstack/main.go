// Command devstack is what `make run` starts: the whole system on the
// embedded default, as separate processes — the broker with embedded NATS,
// the proxy, and one agent with simulated GPUs — plus demo participants.
// Ctrl-C stops everything cleanly.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/registry"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := pflag.NewFlagSet("devstack", pflag.ExitOnError)
	var (
		bin       = fs.String("bin", "./bin", "directory with atelier-broker, atelier-proxy, atelier-agent")
		dataDir   = cli.String(fs, "data", "ATELIER_DATA", "./data", "data directory")
		natsAddr  = cli.String(fs, "nats-listen", "ATELIER_NATS_LISTEN", "127.0.0.1:4222", "embedded NATS listener")
		brokerAt  = cli.String(fs, "broker-http", "ATELIER_BROKER_HTTP", "127.0.0.1:8191", "broker HTTP (dashboard)")
		proxyAt   = cli.String(fs, "proxy-listen", "ATELIER_PROXY_LISTEN", "127.0.0.1:8190", "proxy HTTP for participants")
		gpus      = cli.Int(fs, "gpus", "ATELIER_GPUS", 2, "simulated GPUs of the agent")
		logFormat = cli.String(fs, "log-format", "ATELIER_LOG_FORMAT", "console", "json or console")
	)
	_ = fs.Parse(os.Args[1:])
	cli.MustApplyEnv(fs)

	layout := datalayout.New(*dataDir)
	if err := layout.Ensure(); err != nil {
		return err
	}
	password, err := demoPassword(layout)
	if err != nil {
		return err
	}
	if err := demoUsers(layout, password); err != nil {
		return err
	}

	ctx, cancel := cli.SignalContext()
	defer cancel()
	natsURL := "nats://" + *natsAddr
	common := []string{"--data", *dataDir, "--log-format", *logFormat}

	var procs []*exec.Cmd
	defer func() { stopAll(procs) }()
	start := func(name string, args ...string) error {
		cmd := exec.Command(filepath.Join(*bin, name), args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C is ours to forward, in order
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		procs = append(procs, cmd)
		return nil
	}

	if err := start("atelier-broker", append([]string{"serve", "--nats-listen", *natsAddr, "--http", *brokerAt}, common...)...); err != nil {
		return err
	}
	if err := waitHealthy(ctx, "http://"+*brokerAt+"/healthz"); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if err := start("atelier-proxy", append([]string{"--listen", *proxyAt, "--nats-url", natsURL}, common...)...); err != nil {
		return err
	}
	if err := waitHealthy(ctx, "http://"+*proxyAt+"/healthz"); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	if err := start("atelier-agent", "--id", "demo-gpu-box", "--runtime", "simulated", "--gpus", fmt.Sprint(*gpus),
		"--sim-dir", filepath.Join(*dataDir, "sim"), "--nats-url", natsURL, "--log-format", *logFormat); err != nil {
		return err
	}

	fmt.Printf(`
Atelier is running: broker (embedded NATS at %s), proxy, one agent with %d simulated GPUs.
Participants user001 … user004 and "instructor" share the demo password.
Open the proxy as a participant, e.g. http://%s/user001/ (basic auth user001 / the password).

proxy: http://%s
dashboard: http://%s
password: %s

Ctrl-C stops everything.
`, natsURL, *gpus, *proxyAt, *proxyAt, *brokerAt, password)

	done := make(chan error, len(procs))
	for _, p := range procs {
		go func() { done <- p.Wait() }()
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "\nstopping…")
		return nil
	case err := <-done:
		return fmt.Errorf("a component exited: %v", err)
	}
}

// stopAll stops the processes in reverse start order (agent, proxy,
// broker), each with SIGTERM and a grace period.
func stopAll(procs []*exec.Cmd) {
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if p.ProcessState != nil {
			continue
		}
		_ = p.Process.Signal(syscall.SIGTERM)
		exited := make(chan struct{})
		go func() { _, _ = p.Process.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = p.Process.Kill()
		}
	}
}

func waitHealthy(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("not healthy after 30s at " + url)
}

// demoPassword returns the demo password, made once per data directory.
func demoPassword(layout datalayout.Layout) (string, error) {
	path := filepath.Join(layout.MetaDir(), "demo-password")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 9)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	pw := "demo-" + hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write demo password: %w", err)
	}
	return pw, nil
}

// demoUsers creates user001–user004 and an instructor, once.
func demoUsers(layout datalayout.Layout, password string) error {
	reg, err := registry.Open(registry.Config{Path: layout.RegistryPath()})
	if err != nil {
		return err
	}
	ctx := context.Background()
	users := []registry.User{{ID: "instructor", DisplayName: "Instructor", Role: registry.RoleInstructor}}
	for i := 1; i <= 4; i++ {
		users = append(users, registry.User{ID: fmt.Sprintf("user%03d", i), DisplayName: fmt.Sprintf("Participant %d", i), Role: registry.RoleParticipant})
	}
	for _, u := range users {
		if _, err := reg.Create(ctx, u, password); err != nil && !errors.Is(err, registry.ErrUserExists) {
			return fmt.Errorf("create demo user %s: %w", u.ID, err)
		}
		if err := layout.EnsureInstance(u.ID); err != nil {
			return err
		}
	}
	return nil
}
