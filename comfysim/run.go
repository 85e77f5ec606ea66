package main

import (
	"context"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/comfysim"
)

// run serves the simulator on addr until ctx ends (SIGINT, SIGTERM),
// after startupDelay (a slow-starting ComfyUI). A simulated crash exits
// the process with status 1, as a crashed ComfyUI would.
func run(ctx context.Context, cfg comfysim.Config, addr string, startupDelay time.Duration) error {
	logger := cfg.Logger
	cfg.OnCrash = func() {
		logger.Error().Msg("simulated crash: exiting with status 1")
		os.Exit(1)
	}
	sim, err := comfysim.New(cfg)
	if err != nil {
		return err
	}
	defer sim.Close()
	if startupDelay > 0 {
		logger.Info().Dur("delay", startupDelay).Msg("simulating a slow start")
		if !backoff.Sleep(ctx, startupDelay) {
			return nil
		}
	}
	if err := sim.Start(ctx, addr); err != nil {
		return err
	}
	logger.Info().Str("url", sim.URL()).Msg("To see the GUI go to: " + sim.URL())
	<-ctx.Done()
	logger.Info().Msg("stopping")
	return sim.Close()
}

// newLogger logs to stderr as JSON lines or for a console.
func newLogger(format string) zerolog.Logger {
	if format == "json" {
		return zerolog.New(os.Stderr).With().Timestamp().Logger()
	}
	return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
}
