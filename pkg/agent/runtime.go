package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
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
	// URL is ComfyUI's base URL.
	URL string
}

// Runtime provides and supervises the ComfyUI instances of the slots. The
// agent runs jobs against the endpoints and never cares how they run.
type Runtime interface {
	// Start brings up one ComfyUI per slot (or attaches to running ones)
	// and returns their endpoints.
	Start(ctx context.Context) ([]Endpoint, error)
	// Stop stops what Start started.
	Stop(ctx context.Context) error
}

// External attaches to ComfyUI instances that something else runs.
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
		out[i] = Endpoint{Slot: "gpu" + strconv.Itoa(i), URL: u}
	}
	return out, nil
}

// Stop does nothing: external ComfyUIs are not ours to stop.
func (e *External) Stop(context.Context) error { return nil }

// Simulated starts one in-process ComfyUI simulator per simulated GPU: the
// "GPU" of the demo and of tests.
type Simulated struct {
	// GPUs is the number of simulated GPUs (slots).
	GPUs int
	// Dir holds each simulator's input, output and temp directories.
	Dir string
	// StepDelay is the simulated time per sampler step.
	StepDelay time.Duration
	// Configure, if set, adjusts each simulator's config (tests inject
	// hooks and faults).
	Configure func(slot int, cfg *comfysim.Config)
	Logger    zerolog.Logger

	sims []*comfysim.Server
}

// Start starts the simulators on loopback ports.
func (s *Simulated) Start(ctx context.Context) ([]Endpoint, error) {
	if s.GPUs <= 0 {
		return nil, errors.New("simulated runtime: GPUs must be positive")
	}
	var out []Endpoint
	for i := range s.GPUs {
		cfg := comfysim.Config{
			Dir:        filepath.Join(s.Dir, "gpu"+strconv.Itoa(i)),
			StepDelay:  s.StepDelay,
			DeviceName: fmt.Sprintf("cuda:0 Simulated GPU %d : cudaMallocAsync", i),
			Logger:     s.Logger.With().Int("sim", i).Logger(),
		}
		if s.Configure != nil {
			s.Configure(i, &cfg)
		}
		sim, err := comfysim.New(cfg)
		if err != nil {
			_ = s.Stop(ctx)
			return nil, fmt.Errorf("simulated runtime: %w", err)
		}
		if err := sim.Start(ctx, "127.0.0.1:0"); err != nil {
			_ = s.Stop(ctx)
			return nil, fmt.Errorf("simulated runtime: start gpu%d: %w", i, err)
		}
		s.sims = append(s.sims, sim)
		out = append(out, Endpoint{Slot: "gpu" + strconv.Itoa(i), GPU: "Simulated GPU " + strconv.Itoa(i), URL: sim.URL()})
	}
	return out, nil
}

// Stop stops the simulators.
func (s *Simulated) Stop(context.Context) error {
	var errs []error
	for _, sim := range s.sims {
		errs = append(errs, sim.Close())
	}
	s.sims = nil
	return errors.Join(errs...)
}

// Simulators exposes the running simulators (tests inject faults).
func (s *Simulated) Simulators() []*comfysim.Server { return s.sims }
