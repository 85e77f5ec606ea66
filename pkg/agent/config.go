// Package agent is the GPU side of Atelier: one agent per GPU box, one slot
// per GPU, each slot bound to one ComfyUI. A slot pulls exactly one ticket
// when it is free, claims the job from the broker, runs it in its ComfyUI,
// relays the live events, ships the output files to mello and reports the
// result, then acknowledges the ticket. The agent dials out to NATS only:
// a GPU box needs no inbound port.
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/rs/zerolog"
)

// Config configures an Agent.
type Config struct {
	// ID names the agent (default: the host name). One token: letters,
	// digits, '-' and '_'.
	ID string
	// Pool is the pool the agent serves (default "default").
	Pool string

	// NATSURL is the broker's NATS URL; NATSUser and NATSPassword its
	// credentials.
	NATSURL                string
	NATSUser, NATSPassword string

	// Runtime provides the ComfyUI of each slot.
	Runtime Runtime

	// SpoolDir holds output files between ComfyUI and their upload to
	// mello when they cannot be read where ComfyUI wrote them (an
	// external ComfyUI; default: a directory under the OS temp dir).
	SpoolDir string

	// InputCacheDir is the box's content-addressed cache of input files,
	// kept across restarts (default: <ScratchDir>/cache/inputs, or
	// <SpoolDir>/inputs without a scratch folder). InputCacheBytes caps
	// it (default 100 GiB; negative: no cap): the least recently used
	// inputs no job holds are evicted, with the links placed from them
	// into ComfyUI's input folder.
	InputCacheDir   string
	InputCacheBytes int64
	// KeepOutputs keeps output files on the box once they are in mello.
	// By default each is emptied when its run is over (truncated, its
	// name kept: ComfyUI numbers new files after the existing ones, and a
	// name used twice would make mello rename the second file).
	KeepOutputs bool

	// HeartbeatInterval paces heartbeats (default 2 s).
	HeartbeatInterval time.Duration
	// FetchWait bounds one pull for a ticket (default 3 s); a free slot
	// pulls again right after. A drain waits for pulls under way, so it
	// is also what a drain may take beyond the running jobs.
	FetchWait time.Duration
	// ClaimTimeout bounds the claim request to the broker (default 10 s).
	ClaimTimeout time.Duration
	// RetryDelay is how long a ticket waits before redelivery when this
	// agent cannot run it now (default 5 s).
	RetryDelay time.Duration

	// Prefetch makes each busy slot fetch, claim and stage its next job
	// while the current one runs, so the GPU starts the next job the
	// moment the current one ends (default on; DisablePrefetch turns it
	// off).
	DisablePrefetch bool
	// EventTimeout is the watchdog of a running job: no event from
	// ComfyUI for this long and the job is interrupted, its ComfyUI
	// restarted and the job retried elsewhere (default 10 min: a video
	// sampler step can take minutes).
	EventTimeout time.Duration
	// DrainTimeout is how long running jobs may finish after SIGTERM or
	// a drain without a deadline, before they are released back to the
	// queue (default 5 min).
	DrainTimeout time.Duration

	// GPUStats, if set, reads the GPUs' memory and utilisation for the
	// heartbeat every GPUStatsInterval (default 10 s); slots are matched
	// by GPU UUID, else index. Without it the heartbeat carries what
	// ComfyUI's /system_stats says.
	GPUStats         func(ctx context.Context) ([]GPU, error)
	GPUStatsInterval time.Duration
	// ScratchDir, if set, is measured every ScratchInterval (default 30
	// s) for Heartbeat.ScratchBytes.
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
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 2 * time.Second
	}
	if c.FetchWait == 0 {
		c.FetchWait = 3 * time.Second
	}
	if c.ClaimTimeout == 0 {
		c.ClaimTimeout = 10 * time.Second
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = 5 * time.Second
	}
	if c.EventTimeout == 0 {
		c.EventTimeout = 10 * time.Minute
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 5 * time.Minute
	}
	if c.GPUStatsInterval == 0 {
		c.GPUStatsInterval = 10 * time.Second
	}
	if c.ScratchInterval == 0 {
		c.ScratchInterval = 30 * time.Second
	}
	if c.InputCacheDir == "" && c.ScratchDir != "" {
		c.InputCacheDir = Scratch{Root: c.ScratchDir}.Cache()
	}
	if c.InputCacheBytes == 0 {
		c.InputCacheBytes = DefaultInputCacheBytes
	}
}

// DefaultInputCacheBytes is the input cache's default cap.
const DefaultInputCacheBytes = 100 << 30

func (c *Config) validate() error {
	var errs []error
	if err := wire.ValidateToken("agent id", c.ID); err != nil {
		errs = append(errs, err)
	}
	if err := wire.ValidateToken("pool", c.Pool); err != nil {
		errs = append(errs, err)
	}
	if c.NATSURL == "" {
		errs = append(errs, errors.New("NATSURL is required"))
	}
	if c.Runtime == nil {
		errs = append(errs, errors.New("Runtime is required"))
	}
	if c.HeartbeatInterval <= 0 || c.FetchWait <= 0 || c.ClaimTimeout <= 0 || c.RetryDelay <= 0 ||
		c.EventTimeout <= 0 || c.DrainTimeout <= 0 || c.GPUStatsInterval <= 0 || c.ScratchInterval <= 0 {
		errs = append(errs, errors.New("intervals must be positive"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	return nil
}
