package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/rs/zerolog"
)

// Endpoint is one slot's ComfyUI.
type Endpoint struct {
	// Slot names the slot, e.g. "gpu0".
	Slot string
	// GPU describes the device, e.g. "NVIDIA H100 80GB HBM3".
	GPU string
	// GPUIndex is the device's nvidia-smi index, -1 when unknown; GPUUUID
	// its UUID. They match the slot to GPUStats readings.
	GPUIndex int
	GPUUUID  string
	// URL is ComfyUI's base URL.
	URL string
	// OutputDir and TempDir are ComfyUI's output and temp folders on this
	// host, when the runtime knows them: the agent then reads outputs in
	// place instead of copying them through /view ("": it cannot).
	OutputDir, TempDir string
	// InputDir is ComfyUI's input folder on this host, when the runtime
	// knows it: the agent then links inputs there from its cache instead
	// of uploading them through ComfyUI's /upload/image, which holds a
	// whole file in memory and refuses one over --max-upload-size.
	InputDir string
}

// Runtime provides and supervises the ComfyUI instances of the slots. The
// agent runs jobs against the endpoints and never cares how they run.
type Runtime interface {
	// Start brings up one ComfyUI per slot (or attaches to running ones)
	// and returns their endpoints. It does not wait for them to be
	// healthy: each slot waits for its own ComfyUI, so one slow or broken
	// GPU does not hold the others back.
	Start(ctx context.Context) ([]Endpoint, error)
	// Stop stops what Start started.
	Stop(ctx context.Context) error
}

// Supervisor is implemented by runtimes that own their ComfyUI instances
// (process, docker, simulated). The agent uses it for its watchdogs: a
// hung or out-of-memory ComfyUI is restarted, and a slot learns at once
// that its ComfyUI died instead of waiting for timeouts.
type Supervisor interface {
	// Restart stops the slot's ComfyUI and starts a new one. It returns
	// once the new one is started, not necessarily healthy.
	Restart(ctx context.Context, slot string) error
	// Exited returns a channel that is closed when the slot's current
	// ComfyUI instance exits. Each instance has its own channel: ask
	// again after a restart.
	Exited(slot string) <-chan struct{}
}

// ErrUnknownSlot is returned for a slot the runtime does not run.
var ErrUnknownSlot = errors.New("unknown slot")

// External attaches to ComfyUI instances that something else runs. It
// cannot restart them: a hung external ComfyUI is only interrupted.
type External struct {
	URLs []string
}

// Start returns one endpoint per URL.
func (e *External) Start(context.Context) ([]Endpoint, error) {
	if len(e.URLs) == 0 {
		return nil, errors.New("external runtime: no ComfyUI URLs")
	}
	out := make([]Endpoint, len(e.URLs))
	for i, u := range e.URLs {
		out[i] = Endpoint{Slot: "gpu" + strconv.Itoa(i), GPUIndex: -1, URL: u}
	}
	return out, nil
}

// Stop does nothing: external ComfyUIs are not ours to stop.
func (e *External) Stop(context.Context) error { return nil }

// Simulated starts one in-process ComfyUI simulator per simulated GPU: the
// "GPU" of the demo and of tests. It supervises them like the process
// runtime supervises ComfyUI: a simulator that crashes (FaultCrash) is
// started again on the same port.
type Simulated struct {
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
	// 100 ms).
	RestartDelay time.Duration
	Logger       zerolog.Logger

	mu         sync.Mutex
	sims       []*comfysim.Server
	addrs      []string
	exited     []chan struct{}
	restarting []bool
	stopping   bool
	wg         sync.WaitGroup
}

func (s *Simulated) config(i int) comfysim.Config {
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
func (s *Simulated) Start(ctx context.Context) ([]Endpoint, error) {
	if s.GPUs <= 0 {
		return nil, errors.New("simulated runtime: GPUs must be positive")
	}
	if s.RestartDelay == 0 {
		s.RestartDelay = 100 * time.Millisecond
	}
	s.mu.Lock()
	s.stopping = false
	s.sims = make([]*comfysim.Server, s.GPUs)
	s.addrs = make([]string, s.GPUs)
	s.exited = make([]chan struct{}, s.GPUs)
	s.restarting = make([]bool, s.GPUs)
	s.mu.Unlock()
	var out []Endpoint
	for i := range s.GPUs {
		if err := s.startSim(ctx, i, "127.0.0.1:0"); err != nil {
			_ = s.Stop(ctx)
			return nil, fmt.Errorf("simulated runtime: start gpu%d: %w", i, err)
		}
		s.mu.Lock()
		sim := s.sims[i]
		s.mu.Unlock()
		out = append(out, Endpoint{
			Slot: "gpu" + strconv.Itoa(i), GPU: "Simulated GPU " + strconv.Itoa(i), GPUIndex: i, URL: sim.URL(),
			OutputDir: sim.OutputDir(), TempDir: sim.TempDir(), InputDir: sim.InputDir(),
		})
	}
	return out, nil
}

// startSim starts simulator i on addr and watches it.
func (s *Simulated) startSim(ctx context.Context, i int, addr string) error {
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
func (s *Simulated) watch(i int, sim *comfysim.Server, exited chan struct{}) {
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
	for try := 0; ; try++ {
		time.Sleep(s.RestartDelay)
		s.mu.Lock()
		stopping := s.stopping
		s.mu.Unlock()
		if stopping {
			return
		}
		if err := s.startSim(context.Background(), i, addr); err == nil {
			return
		} else if try > 50 {
			s.Logger.Error().Err(err).Int("sim", i).Msg("simulated ComfyUI does not come back")
			return
		}
	}
}

func (s *Simulated) index(slot string) (int, error) {
	i, err := strconv.Atoi(slot[min(3, len(slot)):])
	if err != nil || len(slot) < 4 || slot[:3] != "gpu" || i < 0 || i >= len(s.sims) {
		return 0, fmt.Errorf("simulated runtime: %w %q", ErrUnknownSlot, slot)
	}
	return i, nil
}

// Restart closes the slot's simulator and starts a fresh one on the same
// port, as a process supervisor would.
func (s *Simulated) Restart(ctx context.Context, slot string) error {
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
	var lastErr error
	for range 50 {
		if lastErr = s.startSim(ctx, i, addr); lastErr == nil {
			return nil
		}
		if !sleep(ctx, 20*time.Millisecond) {
			break
		}
	}
	return fmt.Errorf("simulated runtime: restart %s: %w", slot, lastErr)
}

// Exited returns a channel closed when the slot's current simulator dies.
func (s *Simulated) Exited(slot string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, err := s.index(slot)
	if err != nil {
		return nil
	}
	return s.exited[i]
}

// Stop stops the simulators.
func (s *Simulated) Stop(context.Context) error {
	s.mu.Lock()
	s.stopping = true
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
func (s *Simulated) Simulators() []*comfysim.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*comfysim.Server(nil), s.sims...)
}
