package retention

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// Defaults of JanitorConfig.
const (
	DefaultOutputTTL = 7 * 24 * time.Hour
	DefaultTempTTL   = 24 * time.Hour
	DefaultInterval  = 15 * time.Minute
)

// JanitorConfig configures a Janitor. Zero values take the documented
// defaults; a negative TTL keeps that kind forever.
type JanitorConfig struct {
	// Store holds the files; it must implement filestore.Walker. Required.
	Store filestore.Store
	// OutputTTL: outputs older than this are deleted. Default 7 days (a
	// workshop week; participants download during the workshop).
	OutputTTL time.Duration
	// TempTTL: previews and other temp files. Default 24 h.
	TempTTL time.Duration
	// InputTTL: uploads. Default: kept (0 or negative), because a queued or
	// re-run job may still reference them; set it to expire uploads too.
	InputTTL time.Duration
	// Interval between sweeps. Default 15 minutes.
	Interval time.Duration
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
	// Logger. Default: disabled.
	Logger *zerolog.Logger
}

func (c *JanitorConfig) withDefaults() (JanitorConfig, error) {
	cfg := *c
	if cfg.Store == nil {
		return cfg, errors.New("retention: JanitorConfig.Store is required")
	}
	if _, err := walker(cfg.Store); err != nil {
		return cfg, err
	}
	if cfg.OutputTTL == 0 {
		cfg.OutputTTL = DefaultOutputTTL
	}
	if cfg.TempTTL == 0 {
		cfg.TempTTL = DefaultTempTTL
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		l := zerolog.Nop()
		cfg.Logger = &l
	}
	return cfg, nil
}

// ttl returns the TTL of kind, 0 when it is kept forever.
func (c *JanitorConfig) ttl(k filestore.Kind) time.Duration {
	var d time.Duration
	switch k {
	case filestore.KindOutput:
		d = c.OutputTTL
	case filestore.KindTemp:
		d = c.TempTTL
	case filestore.KindInput:
		d = c.InputTTL
	}
	return max(d, 0)
}

// SweepResult counts what one sweep did.
type SweepResult struct {
	Deleted      int   `json:"deleted"`
	DeletedBytes int64 `json:"deleted_bytes"`
	Kept         int   `json:"kept"`
	Errors       int   `json:"errors"`
}

// Janitor deletes expired files periodically. Files are judged by their
// modification time: when an output was stored, when an upload arrived.
type Janitor struct {
	cfg JanitorConfig
	w   filestore.Walker
	log zerolog.Logger

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	swept  chan SweepResult // the latest sweep's result, for Swept
}

// NewJanitor validates cfg.
func NewJanitor(cfg JanitorConfig) (*Janitor, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	w, _ := walker(c.Store)
	return &Janitor{cfg: c, w: w, log: c.Logger.With().Str("component", "retention").Logger(), swept: make(chan SweepResult, 1)}, nil
}

// Start sweeps once at once and then every Interval until Stop.
func (j *Janitor) Start(ctx context.Context) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.cancel != nil {
		return errors.New("retention: janitor already started")
	}
	ctx, j.cancel = context.WithCancel(context.WithoutCancel(ctx))
	j.done = make(chan struct{})
	go j.loop(ctx)
	j.log.Info().Dur("output_ttl", j.cfg.OutputTTL).Dur("temp_ttl", j.cfg.TempTTL).Dur("input_ttl", j.cfg.InputTTL).
		Dur("interval", j.cfg.Interval).Msg("retention janitor started")
	return nil
}

// Stop ends the loop and waits for a running sweep to stop (it is
// cancelled: it stops at its current file), or for ctx to end. Stopping
// a janitor not started, or stopped, does nothing.
func (j *Janitor) Stop(ctx context.Context) error {
	j.mu.Lock()
	cancel, done := j.cancel, j.done
	j.cancel = nil
	j.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("retention: stop janitor: %w", ctx.Err())
	}
}

// Swept delivers the result of each sweep the loop makes (the latest one
// when nobody read in between): a signal for tests instead of sleeps.
func (j *Janitor) Swept() <-chan SweepResult { return j.swept }

func (j *Janitor) loop(ctx context.Context) {
	defer close(j.done)
	t := time.NewTicker(j.cfg.Interval)
	defer t.Stop()
	for {
		res, err := j.Sweep(ctx)
		if err != nil && ctx.Err() == nil {
			j.log.Warn().Err(err).Msg("retention sweep incomplete")
		}
		select {
		case <-j.swept:
		default:
		}
		j.swept <- res
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep deletes every expired file once and reports what it did. It goes on
// after errors with single files or folders and returns them joined.
func (j *Janitor) Sweep(ctx context.Context) (SweepResult, error) {
	var res SweepResult
	users, err := j.w.Users(ctx)
	if err != nil {
		return res, fmt.Errorf("retention: list users: %w", err)
	}
	now := j.cfg.Now()
	var errs []error
	for _, u := range users {
		for _, k := range Kinds {
			ttl := j.cfg.ttl(k)
			if ttl == 0 {
				continue
			}
			cutoff := now.Add(-ttl)
			// Collect first, delete after: removing while a directory is
			// being read is undefined on some stores.
			var expired []filestore.Info
			err := j.w.Walk(ctx, u, k, func(i filestore.Info) error {
				if i.ModTime.Before(cutoff) {
					expired = append(expired, i)
				} else {
					res.Kept++
				}
				return nil
			})
			if err != nil {
				if ctx.Err() != nil {
					return res, ctx.Err()
				}
				errs = append(errs, err)
				res.Errors++
			}
			for _, i := range expired {
				if err := j.cfg.Store.Remove(ctx, i.Ref); err != nil && !errors.Is(err, filestore.ErrNotFound) {
					if ctx.Err() != nil {
						return res, ctx.Err()
					}
					errs = append(errs, err)
					res.Errors++
					continue
				}
				res.Deleted++
				res.DeletedBytes += i.Size
				j.log.Debug().Stringer("ref", i.Ref).Time("mtime", i.ModTime).Msg("expired file deleted")
			}
		}
	}
	if res.Deleted > 0 {
		j.log.Info().Int("deleted", res.Deleted).Int64("bytes", res.DeletedBytes).Int("kept", res.Kept).Msg("retention sweep")
	}
	return res, errors.Join(errs...)
}
