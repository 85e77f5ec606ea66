// Package agent is the GPU side of Atelier: one agent per GPU box, one slot
// per GPU, each slot bound to one ComfyUI. A slot pulls exactly one ticket
// when it is free, claims the job from the broker, runs it in its ComfyUI,
// relays the live events, ships the output files to mello and reports the
// result, then acknowledges the ticket. The agent dials out to NATS only:
// a GPU box needs no inbound port.
package agent

import (
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
	// mello (default: a directory under the OS temp dir).
	SpoolDir string

	// HeartbeatInterval paces heartbeats (default 2 s).
	HeartbeatInterval time.Duration
	// FetchWait bounds one pull for a ticket (default 30 s); a free slot
	// pulls again right after.
	FetchWait time.Duration
	// ClaimTimeout bounds the claim request to the broker (default 10 s).
	ClaimTimeout time.Duration
	// RetryDelay is how long a ticket waits before redelivery when this
	// agent cannot run it now (default 5 s).
	RetryDelay time.Duration

	Logger zerolog.Logger
}

func (c *Config) setDefaults() {
	if c.ID == "" {
		if h, err := os.Hostname(); err == nil {
			c.ID = sanitizeID(h)
		}
	}
	if c.Pool == "" {
		c.Pool = wire.DefaultPool
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 2 * time.Second
	}
	if c.FetchWait == 0 {
		c.FetchWait = 30 * time.Second
	}
	if c.ClaimTimeout == 0 {
		c.ClaimTimeout = 10 * time.Second
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = 5 * time.Second
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
	if c.NATSURL == "" {
		errs = append(errs, errors.New("NATSURL is required"))
	}
	if c.Runtime == nil {
		errs = append(errs, errors.New("Runtime is required"))
	}
	if c.HeartbeatInterval <= 0 || c.FetchWait <= 0 || c.ClaimTimeout <= 0 || c.RetryDelay <= 0 {
		errs = append(errs, errors.New("intervals must be positive"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	return nil
}

// sanitizeID turns a host name into a valid agent id.
func sanitizeID(h string) string {
	b := []byte(h)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		if !ok {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}
