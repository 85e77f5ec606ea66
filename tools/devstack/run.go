package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/datalayout"
)

const (
	// healthTimeout bounds the wait for a component's /healthz.
	healthTimeout = 30 * time.Second
	// stopGrace is how long a component may take to stop after SIGTERM.
	stopGrace = 15 * time.Second
)

// devstack is the demo system: where the binaries and the data are, the
// components' addresses, and the agent's simulated GPUs.
type devstack struct {
	bin, dataDir                string
	natsAddr, brokerAt, proxyAt string
	gpus                        int
	logFormat                   string

	procs  []*proc    // started, in order
	exited chan *proc // each process once it has exited
}

// proc is one component's process.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited
	err  error         // its exit, once done
}

// run prepares the demo participants, starts broker, proxy and agent, and
// waits until ctx ends (Ctrl-C) or a component exits; it stops them all
// either way.
func (d *devstack) run(ctx context.Context) error {
	layout := datalayout.New(d.dataDir)
	if err := layout.Ensure(); err != nil {
		return err
	}
	password, err := demoPassword(layout)
	if err != nil {
		return err
	}
	if err := demoUsers(ctx, layout, password); err != nil {
		return err
	}
	defer d.stopAll()
	if err := d.startAll(ctx); err != nil {
		return err
	}
	d.printBanner(password)
	return d.wait(ctx)
}

// startAll starts the broker, the proxy and the agent, each once the one
// before is healthy.
func (d *devstack) startAll(ctx context.Context) error {
	natsURL := "nats://" + d.natsAddr
	common := []string{"--data", d.dataDir, "--log-format", d.logFormat}
	if err := d.start("atelier-broker", append([]string{"serve", "--nats-listen", d.natsAddr, "--http", d.brokerAt}, common...)...); err != nil {
		return err
	}
	if err := waitHealthy(ctx, "http://"+d.brokerAt+"/healthz"); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if err := d.start("atelier-proxy", append([]string{"--listen", d.proxyAt, "--nats-url", natsURL}, common...)...); err != nil {
		return err
	}
	if err := waitHealthy(ctx, "http://"+d.proxyAt+"/healthz"); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	return d.start("atelier-agent", "--id", "demo-gpu-box", "--runtime", "simulated", "--gpus", fmt.Sprint(d.gpus),
		"--sim-dir", filepath.Join(d.dataDir, "sim"), "--nats-url", natsURL, "--log-format", d.logFormat)
}

func (d *devstack) printBanner(password string) {
	fmt.Printf(`
Atelier is running: broker (embedded NATS at nats://%s), proxy, one agent with %d simulated GPUs.
Participants user001 … user004 and "instructor" share the demo password.
Open the proxy as a participant, e.g. http://%s/user001/ (basic auth user001 / the password).

proxy: http://%s
dashboard: http://%s
password: %s

Ctrl-C stops everything.
`, d.natsAddr, d.gpus, d.proxyAt, d.proxyAt, d.brokerAt, password)
}

// wait returns when ctx ends (nil) or a component exits (an error).
func (d *devstack) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "\nstopping…")
		return nil
	case p := <-d.exited:
		return fmt.Errorf("%s exited: %v", p.name, p.err)
	}
}

// start starts one component in its own process group: Ctrl-C is ours to
// forward, in order.
func (d *devstack) start(name string, args ...string) error {
	cmd := exec.Command(filepath.Join(d.bin, name), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	if d.exited == nil {
		d.exited = make(chan *proc, 3) // broker, proxy, agent: never blocks
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	d.procs = append(d.procs, p)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		d.exited <- p
	}()
	return nil
}

// stopAll stops the processes in reverse start order (agent, proxy,
// broker), each with SIGTERM and stopGrace before SIGKILL.
func (d *devstack) stopAll() {
	for i := len(d.procs) - 1; i >= 0; i-- {
		p := d.procs[i]
		select {
		case <-p.done:
			continue
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopGrace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// waitHealthy waits until url answers 200, for up to healthTimeout.
func waitHealthy(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	err := backoff.Retry(ctx, backoff.Policy{Min: 100 * time.Millisecond, Max: time.Second}, 0, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return backoff.Permanent(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("not healthy after %s at %s: %w", healthTimeout, url, err)
	}
	return nil
}
