// Package agent is the GPU side of Atelier: one agent per GPU box, one slot
// per GPU, each slot bound to one ComfyUI. A slot pulls exactly one ticket
// when it is free, claims the job from the broker, runs it in its ComfyUI,
// relays the live events, ships the output files to mello and reports the
// result, then acknowledges the ticket. The agent dials out to NATS only:
// a GPU box needs no inbound port.
//
// Where each slot's ComfyUI comes from is a runtime (pkg/agent/runtime and
// its subpackages); the agent builds it from Config.RuntimeConfig, or
// takes the one Config.Runtime gives.
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/agent/gpu"
	"github.com/atelier-run/atelier/pkg/agent/runtime"
	"github.com/atelier-run/atelier/pkg/wire"
)

// Defaults of Config's zero fields; atelier-agent's flags default to them
// too.
const (
	DefaultNATSURL           = "nats://127.0.0.1:4222"
	DefaultHeartbeatInterval = 2 * time.Second
	DefaultFetchWait         = 3 * time.Second
	DefaultClaimTimeout      = 10 * time.Second
	DefaultRetryDelay        = 5 * time.Second
	DefaultEventTimeout      = 10 * time.Minute
	DefaultDrainTimeout      = 5 * time.Minute
	DefaultGPUStatsInterval  = 10 * time.Second
	DefaultScratchInterval   = 30 * time.Second
	// DefaultInputCacheBytes is the input cache's cap.
	DefaultInputCacheBytes = 100 << 30
)

// ErrInvalidConfig is wrapped by every error that says the configuration
// cannot work (a bad value, a runtime that cannot be built from it), as
// opposed to a failure while running: atelier-agent exits 2 for it.
var ErrInvalidConfig = errors.New("agent config")

// Config configures an Agent.
type Config struct {
	// ID names the agent (default: the host name). One token: letters,
	// digits, '-' and '_'.
	ID string
	// Pool is the pool the agent serves (default wire.DefaultPool).
	Pool string

	// NATSURL is the broker's NATS URL (default DefaultNATSURL);
	// NATSUser and NATSPassword its credentials.
	NATSURL                string
	NATSUser, NATSPassword string

	// Runtime provides the ComfyUI of each slot. When nil, the agent
	// builds the one RuntimeConfig describes as it starts.
	Runtime runtime.Runtime
	// RuntimeConfig describes the runtime to build when Runtime is nil.
	RuntimeConfig RuntimeConfig

	// SpoolDir holds output files between ComfyUI and their upload to
	// mello when they cannot be read where ComfyUI wrote them (an
	// external ComfyUI; default: a directory under the OS temp dir).
	SpoolDir string

	// InputCacheDir is the box's content-addressed cache of input files,
	// kept across restarts (default: <ScratchDir>/cache/inputs, or
	// <SpoolDir>/inputs without a scratch folder). InputCacheBytes caps
	// it (default DefaultInputCacheBytes; negative: no cap): the least
	// recently used inputs no job holds are evicted, with the links
	// placed from them into ComfyUI's input folder.
	InputCacheDir   string
	InputCacheBytes int64
	// KeepOutputs keeps output files on the box once they are in mello.
	// By default each is emptied when its run is over (truncated, its
	// name kept: ComfyUI numbers new files after the existing ones, and a
	// name used twice would make mello rename the second file).
	KeepOutputs bool

	// HeartbeatInterval paces heartbeats (default
	// DefaultHeartbeatInterval).
	HeartbeatInterval time.Duration
	// FetchWait bounds one pull for a ticket (default DefaultFetchWait);
	// a free slot pulls again right after. A drain waits for pulls under
	// way, so it is also what a drain may take beyond the running jobs.
	FetchWait time.Duration
	// ClaimTimeout bounds the claim request to the broker (default
	// DefaultClaimTimeout).
	ClaimTimeout time.Duration
	// RetryDelay is how long a ticket waits before redelivery when this
	// agent cannot run it now (default DefaultRetryDelay).
	RetryDelay time.Duration

	// DisablePrefetch turns prefetching off: by default each busy slot
	// fetches, claims and stages its next job while the current one
	// runs, so the GPU starts the next job the moment the current one
	// ends.
	DisablePrefetch bool
	// EventTimeout is the watchdog of a running job: no event from
	// ComfyUI for this long and the job is interrupted, its ComfyUI
	// restarted and the job retried elsewhere (default
	// DefaultEventTimeout: a video sampler step can take minutes).
	EventTimeout time.Duration
	// DrainTimeout is how long running jobs may finish after SIGTERM or
	// a drain without a deadline, before they are released back to the
	// queue (default DefaultDrainTimeout).
	DrainTimeout time.Duration

	// GPUStats, if set, reads the GPUs' memory and utilisation for the
	// heartbeat every GPUStatsInterval (default
	// DefaultGPUStatsInterval); slots are matched by GPU UUID, else
	// index. Without it the heartbeat carries what ComfyUI's
	// /system_stats says. A runtime built from RuntimeConfig sets it
	// when the GPU query answers.
	GPUStats         func(ctx context.Context) ([]gpu.GPU, error)
	GPUStatsInterval time.Duration
	// ScratchDir, if set, is measured every ScratchInterval (default
	// DefaultScratchInterval) for Heartbeat.ScratchBytes. A process or
	// docker runtime built from RuntimeConfig sets it to its scratch
	// root.
	ScratchDir      string
	ScratchInterval time.Duration

	Logger zerolog.Logger
}

func (c *Config) setDefaults() {
	if c.ID == "" {
		if h, err := os.Hostname(); err == nil {
			c.ID = wire.SanitizeToken(h)
		}
	}
	if c.Pool == "" {
		c.Pool = wire.DefaultPool
	}
	if c.NATSURL == "" {
		c.NATSURL = DefaultNATSURL
	}
	setDefault(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	setDefault(&c.FetchWait, DefaultFetchWait)
	setDefault(&c.ClaimTimeout, DefaultClaimTimeout)
	setDefault(&c.RetryDelay, DefaultRetryDelay)
	setDefault(&c.EventTimeout, DefaultEventTimeout)
	setDefault(&c.DrainTimeout, DefaultDrainTimeout)
	setDefault(&c.GPUStatsInterval, DefaultGPUStatsInterval)
	setDefault(&c.ScratchInterval, DefaultScratchInterval)
	if c.InputCacheBytes == 0 {
		c.InputCacheBytes = DefaultInputCacheBytes
	}
	if c.Runtime == nil {
		c.RuntimeConfig.setDefaults()
	}
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

func (c *Config) validate() error {
	var errs []error
	if err := wire.ValidateToken("agent id", c.ID); err != nil {
		errs = append(errs, err)
	}
	if err := wire.ValidateToken("pool", c.Pool); err != nil {
		errs = append(errs, err)
	}
	if c.HeartbeatInterval <= 0 || c.FetchWait <= 0 || c.ClaimTimeout <= 0 || c.RetryDelay <= 0 ||
		c.EventTimeout <= 0 || c.DrainTimeout <= 0 || c.GPUStatsInterval <= 0 || c.ScratchInterval <= 0 {
		errs = append(errs, errors.New("intervals must be positive"))
	}
	if c.Runtime == nil {
		errs = append(errs, c.RuntimeConfig.validate())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// inputCacheDir is where the input cache lives (Config.InputCacheDir).
func (c *Config) inputCacheDir(spoolDir string) string {
	switch {
	case c.InputCacheDir != "":
		return c.InputCacheDir
	case c.ScratchDir != "":
		return Scratch{Root: c.ScratchDir}.Cache()
	}
	return filepath.Join(spoolDir, "inputs")
}
