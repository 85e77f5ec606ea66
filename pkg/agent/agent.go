package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/wire"
)

// Version is reported in heartbeats.
var Version = "dev"

// Agent is a running GPU agent. Create it with New, then Start it, and
// Stop it (at once) or DrainAndStop it (running jobs finish first). Run
// does all of it for a main.
type Agent struct {
	cfg  Config
	log  zerolog.Logger
	boot string

	nc *nats.Conn
	js jetstream.JetStream

	slots []*slot
	// live are the jobs (user/job) the agent holds, from claim to the
	// end of their run (held.go).
	liveMu sync.Mutex
	live   map[string]*held
	// inputs is the box's content-addressed input cache.
	inputs *inputCache
	// emptied remembers where the outputs the agent emptied on the box
	// were stored (by their path on the box).
	emptiedMu sync.Mutex
	emptied   map[string]outputFile
	rules     atomic.Pointer[promptRules] // learnt from the catalog
	startedAt time.Time
	spoolDir  string
	ownSpool  bool

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started atomic.Bool
	stopped chan struct{}
	// active counts runs that have not ended (shipping and reporting
	// included).
	active atomic.Int64

	// Drain state, under dmu. changedCh is closed at every drain or
	// undrain.
	dmu        sync.Mutex
	draining   bool
	drainEpoch int
	changedCh  chan struct{}

	scratchBytes atomic.Int64
	ctlSub       *nats.Subscription

	// hbKick asks the heartbeat loop for a heartbeat now: a slot changed
	// state (the dashboard shows it within hbMinGap, not at the next tick).
	hbKick chan struct{}

	// signals tell tests what happened (testsignals.go); off in
	// production.
	signals testSignals
}

// Timeouts of the agent's lifecycle beyond its Config.
const (
	// natsReconnectWait paces reconnections to NATS (forever).
	natsReconnectWait = 500 * time.Millisecond
	// stopTimeout bounds Run's Stop after the drain.
	stopTimeout = 30 * time.Second
	// reportGrace is what DrainAndStop waits beyond the drain deadline
	// for released jobs to report.
	reportGrace = 30 * time.Second
)

// New validates the configuration and returns an agent ready to Start.
// Configuration errors wrap ErrInvalidConfig.
func New(cfg Config) (*Agent, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:       cfg,
		log:       cfg.Logger.With().Str("component", "agent").Str("agent", cfg.ID).Logger(),
		boot:      uuid.NewString(),
		stopped:   make(chan struct{}),
		changedCh: make(chan struct{}),
		hbKick:    make(chan struct{}, 1),
	}
	return a, nil
}

// Start builds the runtime (unless Config.Runtime gives one), connects to
// NATS, brings up the runtime and starts one loop per slot, the heartbeat
// and the catalog report. It returns once they run; ctx bounds the start
// only.
func (a *Agent) Start(ctx context.Context) (err error) {
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("agent: already started")
	}
	a.startedAt = time.Now().UTC()
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	defer func() {
		if err != nil {
			cancel()
			a.wg.Wait()
			if a.nc != nil {
				a.nc.Close()
			}
		}
	}()
	if err := a.buildRuntime(ctx); err != nil {
		return err
	}
	if err := a.openStorage(); err != nil {
		return err
	}
	if err := a.connect(); err != nil {
		return err
	}
	if err := a.startSlots(ctx); err != nil {
		return err
	}
	if a.ctlSub, err = a.nc.Subscribe(wire.ControlSubject(a.cfg.ID), func(m *nats.Msg) {
		// Off the subscription's goroutine: an interrupt talks to
		// ComfyUI and NATS.
		go a.handleControl(runCtx, m)
	}); err != nil {
		return fmt.Errorf("agent: subscribe to control: %w", err)
	}
	a.wg.Add(4 + len(a.slots))
	go a.heartbeatLoop(runCtx)
	go a.catalogLoop(runCtx)
	go a.gpuStatsLoop(runCtx)
	go a.scratchLoop(runCtx)
	for _, s := range a.slots {
		go s.run(runCtx)
	}
	a.log.Info().Int("slots", len(a.slots)).Str("pool", a.cfg.Pool).Str("nats", a.cfg.NATSURL).Msg("agent started")
	return nil
}

// buildRuntime builds the runtime Config.RuntimeConfig describes when
// Config.Runtime gives none, with the scratch folder and GPU readings it
// brings.
func (a *Agent) buildRuntime(ctx context.Context) error {
	if a.cfg.Runtime != nil {
		return nil
	}
	b, err := a.cfg.RuntimeConfig.build(ctx, a.cfg.ID, a.cfg.Logger)
	if err != nil {
		return err
	}
	a.cfg.Runtime = b.runtime
	if a.cfg.ScratchDir == "" {
		a.cfg.ScratchDir = b.scratch
	}
	if a.cfg.GPUStats == nil {
		a.cfg.GPUStats = b.gpuStats
	}
	return nil
}

// openStorage makes the spool folder and opens the input cache.
func (a *Agent) openStorage() (err error) {
	a.spoolDir = a.cfg.SpoolDir
	if a.spoolDir == "" {
		if a.spoolDir, err = os.MkdirTemp("", "atelier-agent-spool-"); err != nil {
			return fmt.Errorf("agent: spool dir: %w", err)
		}
		a.ownSpool = true
	} else if err := os.MkdirAll(a.spoolDir, 0o750); err != nil {
		return fmt.Errorf("agent: spool dir: %w", err)
	}
	cacheLog := a.log.With().Str("component", "input-cache").Logger()
	if a.inputs, err = openInputCache(a.cfg.inputCacheDir(a.spoolDir), a.cfg.InputCacheBytes, cacheLog); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// connect dials NATS; the connection reconnects forever.
func (a *Agent) connect() (err error) {
	opts := []nats.Option{
		nats.Name("atelier-agent " + a.cfg.ID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(natsReconnectWait),
	}
	if a.cfg.NATSUser != "" {
		opts = append(opts, nats.UserInfo(a.cfg.NATSUser, a.cfg.NATSPassword))
	}
	if a.nc, err = nats.Connect(a.cfg.NATSURL, opts...); err != nil {
		return fmt.Errorf("agent: connect to NATS %s: %w", a.cfg.NATSURL, err)
	}
	if a.js, err = jetstream.New(a.nc); err != nil {
		return fmt.Errorf("agent: jetstream: %w", err)
	}
	return nil
}

// startSlots brings up the runtime and makes a slot of each endpoint.
func (a *Agent) startSlots(ctx context.Context) error {
	endpoints, err := a.cfg.Runtime.Start(ctx)
	if err != nil {
		return fmt.Errorf("agent: runtime: %w", err)
	}
	for _, ep := range endpoints {
		a.slots = append(a.slots, newSlot(a, ep))
	}
	slots := a.slots
	a.inputs.mu.Lock()
	a.inputs.onEvict = func(sha string) {
		for _, s := range slots {
			s.forgetStaged(sha)
		}
	}
	a.inputs.mu.Unlock()
	return nil
}

// Stop stops at once: no more pulls, running jobs' relays interrupted,
// the runtime stopped, the connection closed. Tickets of unfinished jobs
// come back to the queue after their AckWait. (DrainAndStop lets them
// finish first.)
func (a *Agent) Stop(ctx context.Context) error {
	if !a.started.Load() {
		return nil
	}
	select {
	case <-a.stopped:
		return nil
	default:
		close(a.stopped)
	}
	if a.ctlSub != nil {
		_ = a.ctlSub.Unsubscribe()
	}
	a.cancel()
	a.wg.Wait()
	err := a.cfg.Runtime.Stop(ctx)
	if a.nc != nil {
		_ = a.nc.Drain()
	}
	if a.ownSpool {
		_ = os.RemoveAll(a.spoolDir)
	}
	a.log.Info().Msg("agent stopped")
	return err
}

// DrainAndStop drains the agent — no new jobs, prefetched ones given back,
// running jobs get Config.DrainTimeout to finish, what still runs then
// goes back to the queue — waits until its jobs finished or were released
// (the drain deadline plus time to report, or until ctx ends), then Stops
// it.
func (a *Agent) DrainAndStop(ctx context.Context) error {
	a.Drain(a.cfg.DrainTimeout)
	wctx, cancel := context.WithTimeout(ctx, a.cfg.DrainTimeout+reportGrace)
	defer cancel()
	if err := a.WaitIdle(wctx); err != nil {
		a.log.Warn().Msg("jobs still running after the drain deadline; stopping anyway")
	}
	stopCtx, cancelStop := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancelStop()
	return a.Stop(stopCtx)
}

// Run starts an agent and blocks until ctx is done (SIGTERM), then drains
// and stops it (DrainAndStop).
func Run(ctx context.Context, cfg Config) error {
	a, err := New(cfg)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return a.DrainAndStop(context.WithoutCancel(ctx))
}
