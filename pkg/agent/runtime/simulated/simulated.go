// Package simulated is the runtime of the demo and of tests: one
// in-process ComfyUI simulator (pkg/comfysim) per simulated GPU,
// supervised as the process runtime supervises ComfyUI.
package simulated

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/agent/runtime"
	"github.com/atelier-run/atelier/pkg/comfysim"
)

// Runtime starts one in-process ComfyUI simulator per simulated GPU: the
// "GPU" of the demo and of tests. It supervises them like the process
// runtime supervises ComfyUI: a simulator that crashes (FaultCrash) is
// started again on the same port.
type Runtime struct {
	// GPUs is the number of simulated GPUs (slots).
	GPUs int
	// Dir holds each simulator's input, output and temp directories.
	Dir string
	// StepDelay is the simulated time per sampler step.
	StepDelay time.Duration
	// Configure, if set, adjusts each simulator's config (tests inject
	// hooks and faults). It is applied again at each restart.
	Configure func(slot int, cfg *comfysim.Config)
	// RestartDelay is how long a crashed simulator stays down (default
	// DefaultRestartDelay).
	RestartDelay time.Duration
	Logger       zerolog.Logger

	mu         sync.Mutex
	sims       []*comfysim.Server
	addrs      []string
	exited     []chan struct{}
	restarting []bool
	stopping   bool
	// supervising ends with Stop: a restart back-off waits no longer.
	supervising     context.Context
	stopSupervising context.CancelFunc
	wg              sync.WaitGroup
}

func (s *Runtime) config(i int) comfysim.Config {
	cfg := comfysim.Config{
		Dir:        filepath.Join(s.Dir, "gpu"+strconv.Itoa(i)),
		StepDelay:  s.StepDelay,
		DeviceName: fmt.Sprintf("Simulated GPU %d", i),
		Logger:     s.Logger.With().Int("sim", i).Logger(),
	}
	if s.Configure != nil {
		s.Configure(i, &cfg)
	}
	return cfg
}

// Start starts the simulators on loopback ports.
func (s *Runtime) Start(ctx context.Context) ([]runtime.Endpoint, error) {
	if s.GPUs <= 0 {
		return nil, errors.New("simulated runtime: GPUs must be positive")
	}
	if s.RestartDelay == 0 {
		s.RestartDelay = DefaultRestartDelay
	}
	s.mu.Lock()
	s.stopping = false
	s.supervising, s.stopSupervising = context.WithCancel(context.WithoutCancel(ctx))
	s.sims = make([]*comfysim.Server, s.GPUs)
	s.addrs = make([]string, s.GPUs)
	s.exited = make([]chan struct{}, s.GPUs)
	s.restarting = make([]bool, s.GPUs)
	s.mu.Unlock()
	var out []runtime.Endpoint
	for i := range s.GPUs {
		if err := s.startSim(ctx, i, "127.0.0.1:0"); err != nil {
			_ = s.Stop(ctx)
			return nil, fmt.Errorf("simulated runtime: start gpu%d: %w", i, err)
		}
		s.mu.Lock()
		sim := s.sims[i]
		s.mu.Unlock()
		out = append(out, runtime.Endpoint{
			Slot: runtime.SlotName(i), GPU: "Simulated GPU " + strconv.Itoa(i), GPUIndex: i, URL: sim.URL(),
			OutputDir: sim.OutputDir(), TempDir: sim.TempDir(), InputDir: sim.InputDir(),
		})
	}
	return out, nil
}

// startSim starts simulator i on addr and watches it.
func (s *Runtime) startSim(ctx context.Context, i int, addr string) error {
	var prev comfysim.Fault
	s.mu.Lock()
	if old := s.sims[i]; old != nil {
		// A fault models the workload ("this workflow runs out of
		// memory"), not the process: it survives a restart, so a fault
		// that always fires exhausts the job's attempts as a real one
		// would. A fault with a Count clears itself once spent.
		prev = old.CurrentFault()
	}
	s.mu.Unlock()
	sim, err := comfysim.New(s.config(i))
	if err != nil {
		return err
	}
	if err := sim.Start(context.WithoutCancel(ctx), addr); err != nil {
		_ = sim.Close()
		return err
	}
	if prev.Kind != "" && prev.Kind != comfysim.FaultNone && prev.Kind != comfysim.FaultSlowStart {
		sim.SetFault(prev)
	}
	exited := make(chan struct{})
	s.mu.Lock()
	s.sims[i], s.exited[i] = sim, exited
	if addr == "127.0.0.1:0" {
		s.addrs[i] = sim.URL()[len("http://"):]
	}
	s.mu.Unlock()
	s.wg.Add(1)
	go s.watch(i, sim, exited)
	return nil
}

// watch restarts simulator i when it dies on its own.
func (s *Runtime) watch(i int, sim *comfysim.Server, exited chan struct{}) {
	defer s.wg.Done()
	<-sim.Done()
	close(exited)
	s.mu.Lock()
	stop := s.stopping || s.sims[i] != sim || s.restarting[i] // stopped, or replaced by Restart
	addr := s.addrs[i]
	s.mu.Unlock()
	if stop {
		return
	}
	s.Logger.Warn().Int("sim", i).Msg("simulated ComfyUI exited; restarting it")
	s.mu.Lock()
	ctx := s.supervising
	s.mu.Unlock()
	// Down for RestartDelay, as a crashed process is before its
	// supervisor notices, then back on the same port.
	if !backoff.Sleep(ctx, s.RestartDelay) {
		return
	}
	err := backoff.Retry(ctx, backoff.Policy{Min: s.RestartDelay, Max: s.RestartDelay}, restartTries, func(ctx context.Context) error {
		s.mu.Lock()
		stopping := s.stopping
		s.mu.Unlock()
		if stopping {
			return backoff.Permanent(errStopping)
		}
		return s.startSim(ctx, i, addr)
	})
	if err != nil && !errors.Is(err, errStopping) && ctx.Err() == nil {
		s.Logger.Error().Err(err).Int("sim", i).Msg("simulated ComfyUI does not come back")
	}
}

// DefaultRestartDelay is how long a crashed simulator stays down.
const DefaultRestartDelay = 100 * time.Millisecond

// restartTries bounds the attempts to bring a simulator back on its port.
const restartTries = 50

var errStopping = errors.New("simulated runtime: stopping")

func (s *Runtime) index(slot string) (int, error) {
	i, err := strconv.Atoi(slot[min(3, len(slot)):])
	if err != nil || len(slot) < 4 || slot[:3] != "gpu" || i < 0 || i >= len(s.sims) {
		return 0, fmt.Errorf("simulated runtime: %w %q", runtime.ErrUnknownSlot, slot)
	}
	return i, nil
}

// Restart closes the slot's simulator and starts a fresh one on the same
// port, as a process supervisor would.
func (s *Runtime) Restart(ctx context.Context, slot string) error {
	s.mu.Lock()
	i, err := s.index(slot)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	// Mark it as being replaced so its watcher does not restart it too.
	s.restarting[i] = true
	old, addr := s.sims[i], s.addrs[i]
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.restarting[i] = false
		s.mu.Unlock()
	}()
	_ = old.Close()
	// The port is free once the old simulator's listener is closed; a
	// moment may pass before the kernel lets it go.
	err = backoff.Retry(ctx, backoff.Policy{Min: 20 * time.Millisecond, Max: 20 * time.Millisecond}, restartTries, func(ctx context.Context) error {
		return s.startSim(ctx, i, addr)
	})
	if err != nil {
		return fmt.Errorf("simulated runtime: restart %s: %w", slot, err)
	}
	return nil
}

// Exited returns a channel closed when the slot's current simulator dies.
func (s *Runtime) Exited(slot string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, err := s.index(slot)
	if err != nil {
		return nil
	}
	return s.exited[i]
}

// Stop stops the simulators.
func (s *Runtime) Stop(context.Context) error {
	s.mu.Lock()
	s.stopping = true
	if s.stopSupervising != nil {
		s.stopSupervising()
	}
	sims := append([]*comfysim.Server(nil), s.sims...)
	s.mu.Unlock()
	var errs []error
	for _, sim := range sims {
		if sim != nil {
			errs = append(errs, sim.Close())
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// Simulators exposes the running simulators (tests inject faults).
func (s *Runtime) Simulators() []*comfysim.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*comfysim.Server(nil), s.sims...)
}

var (
	_ runtime.Runtime    = (*Runtime)(nil)
	_ runtime.Supervisor = (*Runtime)(nil)
)
