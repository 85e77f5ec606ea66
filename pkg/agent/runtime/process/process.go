// Package process is the runtime that spawns ComfyUI as a child process
// per GPU and supervises it: restarts after an exit, pid files so that a
// ComfyUI an earlier agent left is stopped, and on Linux the kernel kills
// the ComfyUIs when the agent dies.
package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/atelier-run/atelier/internal/waitctx"
	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/agent/gpu"
	"github.com/atelier-run/atelier/pkg/agent/runtime"
)

// Defaults of Runtime's empty fields.
const (
	DefaultListen     = "127.0.0.1"
	DefaultStopGrace  = 10 * time.Second
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = time.Minute
	// stableAfter is how long a process must stay up for its restart
	// back-off to start again at MinBackoff.
	stableAfter = time.Minute
)

// DefaultCommand starts ComfyUI from its checkout.
var DefaultCommand = []string{"python", "main.py"}

// Runtime spawns and supervises one ComfyUI process per GPU:
//
//	python main.py --listen 127.0.0.1 --port P --cuda-device N \
//	    --input-directory I --output-directory O --temp-directory T
//
// A process that exits is started again after a back-off that doubles up
// to MaxBackoff (and resets once a process stayed up for a minute); Stop
// ends the back-off at once. Each
// slot's output goes to LogDir/comfyui-gpuN.log. On Linux the kernel
// kills the processes if the agent dies; LogDir/comfyui-gpuN.pid names
// each one, and Start stops one an earlier run left (pidfile.go).
type Runtime struct {
	// Command is the ComfyUI command (default: DefaultCommand); the
	// agent appends the flags above and then ExtraArgs.
	Command []string
	// Dir is the working directory (the ComfyUI checkout).
	Dir string
	// Env is added to the agent's environment.
	Env []string
	// ExtraArgs are appended to every command line.
	ExtraArgs []string
	// GPUs are the devices, one slot each.
	GPUs []gpu.GPU
	// Listen is the address ComfyUI listens on (default DefaultListen);
	// BasePort the port of the first slot (default
	// runtime.DefaultBasePort, 8188, then 8189 …).
	Listen   string
	BasePort int
	// InputDir is shared by all slots (the scratch layout's inputs/).
	// OutputRoot/gpuN is each slot's output directory: ComfyUI numbers a
	// saved file by scanning its output folder, so two ComfyUIs sharing
	// one would pick the same name for the same prefix and overwrite
	// each other's files. TempRoot/gpuN is each slot's temp directory
	// (ComfyUI empties its temp directory when it starts, so it cannot be
	// shared either).
	InputDir, OutputRoot, TempRoot string
	// LogDir holds one log file per slot.
	LogDir string
	// StopGrace is how long a process may take to exit after SIGTERM
	// before it is killed (default 10 s).
	StopGrace time.Duration
	// MinBackoff and MaxBackoff bound the restart back-off (defaults 1 s
	// and 1 min).
	MinBackoff, MaxBackoff time.Duration
	Logger                 zerolog.Logger

	mu       sync.Mutex
	procs    map[string]*supervised
	stopping bool
	// supervising ends with Stop: the supervisors' back-off waits end
	// with it.
	supervising     context.Context
	stopSupervising context.CancelFunc
	wg              sync.WaitGroup
}

// supervised is one slot's process and its history.
type supervised struct {
	slot    string
	gpu     gpu.GPU
	port    int
	cmd     *exec.Cmd
	exited  chan struct{}
	restart chan struct{} // a requested restart skips the back-off
	// spawned is closed when the next process is spawned (Restart waits
	// on it).
	spawned chan struct{}
}

func (p *Runtime) setDefaults() {
	if len(p.Command) == 0 {
		p.Command = DefaultCommand
	}
	if p.Listen == "" {
		p.Listen = DefaultListen
	}
	if p.BasePort == 0 {
		p.BasePort = runtime.DefaultBasePort
	}
	if p.StopGrace == 0 {
		p.StopGrace = DefaultStopGrace
	}
	if p.MinBackoff == 0 {
		p.MinBackoff = DefaultMinBackoff
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = DefaultMaxBackoff
	}
}

// Start spawns one ComfyUI per GPU and supervises them.
func (p *Runtime) Start(ctx context.Context) ([]runtime.Endpoint, error) {
	p.setDefaults()
	if len(p.GPUs) == 0 {
		return nil, errors.New("process runtime: no GPUs")
	}
	if p.InputDir == "" || p.OutputRoot == "" || p.TempRoot == "" || p.LogDir == "" {
		return nil, errors.New("process runtime: InputDir, OutputRoot, TempRoot and LogDir are required")
	}
	for _, d := range []string{p.InputDir, p.OutputRoot, p.TempRoot, p.LogDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("process runtime: %w", err)
		}
	}
	p.mu.Lock()
	p.procs = map[string]*supervised{}
	p.stopping = false
	p.supervising, p.stopSupervising = context.WithCancel(context.WithoutCancel(ctx))
	p.mu.Unlock()
	var eps []runtime.Endpoint
	for i, g := range p.GPUs {
		sp := &supervised{slot: runtime.SlotName(g.Index), gpu: g, port: p.BasePort + i,
			restart: make(chan struct{}, 1), spawned: make(chan struct{})}
		if err := p.stopLeftover(ctx, sp.slot); err != nil {
			_ = p.Stop(ctx)
			return nil, err
		}
		if err := p.spawn(sp); err != nil {
			_ = p.Stop(ctx)
			return nil, err
		}
		p.mu.Lock()
		p.procs[sp.slot] = sp
		p.mu.Unlock()
		p.wg.Add(1)
		go p.supervise(p.supervising, sp)
		eps = append(eps, runtime.Endpoint{
			Slot: sp.slot, GPU: g.Name, GPUIndex: g.Index, GPUUUID: g.UUID,
			URL:       "http://" + hostPort(p.Listen, sp.port),
			OutputDir: filepath.Join(p.OutputRoot, sp.slot), InputDir: p.InputDir,
			// ComfyUI's --temp-directory T puts its temp folder at T/temp.
			TempDir: filepath.Join(p.TempRoot, sp.slot, "temp"),
		})
	}
	return eps, nil
}

func hostPort(host string, port int) string {
	if host == "0.0.0.0" || host == "" {
		host = "127.0.0.1"
	}
	return host + ":" + strconv.Itoa(port)
}

// spawn starts sp's process. Caller must not hold p.mu.
func (p *Runtime) spawn(sp *supervised) error {
	temp, output := filepath.Join(p.TempRoot, sp.slot), filepath.Join(p.OutputRoot, sp.slot)
	for _, d := range []string{temp, output} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("process runtime: %w", err)
		}
	}
	args := append([]string{}, p.Command[1:]...)
	args = append(args,
		"--listen", p.Listen, "--port", strconv.Itoa(sp.port), "--cuda-device", strconv.Itoa(sp.gpu.Index),
		"--input-directory", p.InputDir, "--output-directory", output, "--temp-directory", temp)
	args = append(args, p.ExtraArgs...)
	logf, err := os.OpenFile(filepath.Join(p.LogDir, "comfyui-"+sp.slot+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("process runtime: log file: %w", err)
	}
	cmd := exec.Command(p.Command[0], args...)
	cmd.Dir = p.Dir
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, killed by the kernel if the agent dies
	// (childAttr).
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("process runtime: start %s for %s: %w", p.Command[0], sp.slot, err)
	}
	if err := p.writePID(sp.slot, cmd.Process.Pid); err != nil {
		p.Logger.Warn().Err(err).Str("slot", sp.slot).Msg("write pid file")
	}
	exited := make(chan struct{})
	p.mu.Lock()
	sp.cmd, sp.exited = cmd, exited
	close(sp.spawned)
	sp.spawned = make(chan struct{})
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.removePID(sp.slot, cmd.Process.Pid)
		logf.Close()
		p.Logger.Warn().Str("slot", sp.slot).Int("pid", cmd.Process.Pid).AnErr("exit", err).Msg("ComfyUI exited")
		close(exited)
	}()
	p.Logger.Info().Str("slot", sp.slot).Int("pid", cmd.Process.Pid).Int("port", sp.port).Msg("ComfyUI started")
	return nil
}

// supervise restarts sp's process whenever it exits, until Stop (ctx).
func (p *Runtime) supervise(ctx context.Context, sp *supervised) {
	defer p.wg.Done()
	pause := backoff.New(backoff.Policy{Min: p.MinBackoff, Max: p.MaxBackoff})
	for {
		p.mu.Lock()
		exited := sp.exited
		p.mu.Unlock()
		startedAt := time.Now()
		<-exited
		if p.isStopping() {
			return
		}
		if time.Since(startedAt) > stableAfter {
			pause.Reset()
		}
		select {
		case <-sp.restart: // requested: no back-off
		default:
			if !p.waitBeforeRestart(ctx, sp, pause.Next()) {
				return
			}
		}
		for !p.isStopping() {
			err := p.spawn(sp)
			if err == nil {
				break
			}
			d := pause.Next()
			p.Logger.Error().Err(err).Str("slot", sp.slot).Dur("backoff", d).Msg("restart ComfyUI")
			if !backoff.Sleep(ctx, d) {
				return
			}
		}
	}
}

// waitBeforeRestart waits d before an exited process is started again, or
// less when a restart is requested meanwhile; false when Stop ends it.
func (p *Runtime) waitBeforeRestart(ctx context.Context, sp *supervised, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-sp.restart:
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	return true
}

func (p *Runtime) isStopping() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopping
}

// Restart stops the slot's process; the supervisor starts a new one at
// once. It returns when the new process is spawned.
func (p *Runtime) Restart(ctx context.Context, slot string) error {
	p.mu.Lock()
	sp := p.procs[slot]
	var spawned chan struct{}
	var stopped <-chan struct{}
	if sp != nil {
		spawned, stopped = sp.spawned, p.supervising.Done()
	}
	p.mu.Unlock()
	if sp == nil {
		return fmt.Errorf("process runtime: %w %q", runtime.ErrUnknownSlot, slot)
	}
	select {
	case sp.restart <- struct{}{}:
	default:
	}
	p.terminate(sp)
	select {
	case <-spawned:
		return nil
	case <-stopped:
		return fmt.Errorf("process runtime: restart %s: the runtime stopped", slot)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// terminate sends SIGTERM to sp's process group, then SIGKILL after the
// grace period.
func (p *Runtime) terminate(sp *supervised) {
	p.mu.Lock()
	cmd, exited := sp.cmd, sp.exited
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(p.StopGrace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

// Exited returns a channel closed when the slot's current process exits.
func (p *Runtime) Exited(slot string) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if sp := p.procs[slot]; sp != nil {
		return sp.exited
	}
	return nil
}

// Stop terminates every process (SIGKILL after StopGrace) and waits for
// them and their supervisors, or until ctx ends.
func (p *Runtime) Stop(ctx context.Context) error {
	p.mu.Lock()
	p.stopping = true
	if p.stopSupervising != nil {
		p.stopSupervising()
	}
	procs := make([]*supervised, 0, len(p.procs))
	for _, sp := range p.procs {
		procs = append(procs, sp)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, sp := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.terminate(sp)
			p.mu.Lock()
			exited := sp.exited
			p.mu.Unlock()
			<-exited
		}()
	}
	if err := waitctx.Wait(ctx, func() { wg.Wait(); p.wg.Wait() }); err != nil {
		return fmt.Errorf("process runtime: stop: %w", err)
	}
	return nil
}

var (
	_ runtime.Runtime    = (*Runtime)(nil)
	_ runtime.Supervisor = (*Runtime)(nil)
)
