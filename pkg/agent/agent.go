package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Version is reported in heartbeats.
var Version = "dev"

// Agent is a running GPU agent. Create it with New, then Start and Stop.
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
}

// hbMinGap is the least time between two heartbeats a state change sends
// early. Each heartbeat costs the broker a KV write on its core goroutine;
// with many short jobs a heartbeat per change would be hundreds a second.
const hbMinGap = 100 * time.Millisecond

// New validates the configuration and returns an agent ready to Start.
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

// Start connects to NATS, brings up the runtime and starts one loop per
// slot, the heartbeat and the catalog report.
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

	a.spoolDir = a.cfg.SpoolDir
	if a.spoolDir == "" {
		if a.spoolDir, err = os.MkdirTemp("", "atelier-agent-spool-"); err != nil {
			return fmt.Errorf("agent: spool dir: %w", err)
		}
		a.ownSpool = true
	} else if err := os.MkdirAll(a.spoolDir, 0o750); err != nil {
		return fmt.Errorf("agent: spool dir: %w", err)
	}

	cacheDir := a.cfg.InputCacheDir
	if cacheDir == "" {
		cacheDir = filepath.Join(a.spoolDir, "inputs")
	}
	if a.inputs, err = openInputCache(cacheDir, a.cfg.InputCacheBytes, a.log.With().Str("component", "input-cache").Logger()); err != nil {
		return fmt.Errorf("agent: %w", err)
	}

	opts := []nats.Option{
		nats.Name("atelier-agent " + a.cfg.ID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
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

// Stop stops pulling, interrupts running jobs' relays, stops the runtime
// and closes the connection. Tickets of unfinished jobs come back to the
// queue after their AckWait.
func (a *Agent) Stop(ctx context.Context) error {
	if !a.started.Load() {
		return nil
	}
	alreadyStopped := false
	select {
	case <-a.stopped:
		alreadyStopped = true
	default:
		close(a.stopped)
	}
	if alreadyStopped {
		return nil
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

// Run starts an agent and blocks until ctx is done (SIGTERM), then drains
// it — no new jobs, running jobs get Config.DrainTimeout to finish, the
// rest goes back to the queue — and stops it.
func Run(ctx context.Context, cfg Config) error {
	a, err := New(cfg)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	a.Shutdown()
	stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return a.Stop(stopCtx)
}

// Shutdown drains the agent and waits until its jobs finished or were
// released (the drain deadline plus time to report), before Stop.
func (a *Agent) Shutdown() {
	a.Drain(a.cfg.DrainTimeout)
	wctx, cancel := context.WithTimeout(context.Background(), a.cfg.DrainTimeout+30*time.Second)
	defer cancel()
	if err := a.WaitIdle(wctx); err != nil {
		a.log.Warn().Msg("jobs still running after the drain deadline; stopping anyway")
	}
}

// heartbeatLoop sends a heartbeat every HeartbeatInterval, and soon
// (within hbMinGap of the last one) after a slot changed state.
func (a *Agent) heartbeatLoop(ctx context.Context) {
	defer a.wg.Done()
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		a.sendHeartbeat()
		last := time.Now()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.hbKick:
			if !sleep(ctx, hbMinGap-time.Since(last)) {
				return
			}
			// Changes meanwhile are in the heartbeat about to go.
			select {
			case <-a.hbKick:
			default:
			}
		}
	}
}

// kickHeartbeat asks for a heartbeat soon: a slot changed state.
func (a *Agent) kickHeartbeat() {
	select {
	case a.hbKick <- struct{}{}:
	default:
	}
}

func (a *Agent) sendHeartbeat() {
	hb := wire.Heartbeat{
		Agent: a.cfg.ID, Pool: a.cfg.Pool, Version: Version, Boot: a.boot,
		StartedAt: a.startedAt, At: time.Now().UTC(),
		Draining: a.Draining(), ScratchBytes: a.scratchBytes.Load(),
		Held: a.heldKeys(),
	}
	for _, s := range a.slots {
		st := s.status()
		hb.Slots = append(hb.Slots, st)
		// One ticket beyond the running job per working slot: the one it
		// stages while the current job runs.
		if !a.cfg.DisablePrefetch && !hb.Draining && (st.State == wire.SlotIdle || st.State == wire.SlotBusy) {
			hb.Prefetch++
		}
	}
	data, _ := json.Marshal(hb)
	if err := a.nc.Publish(wire.HeartbeatSubject(a.cfg.ID), data); err != nil {
		a.log.Warn().Err(err).Msg("heartbeat")
	}
}

// catalogLoop reports the ComfyUI catalog once a slot is healthy, and
// again whenever a slot's ComfyUI restarts (its nodes may have changed).
func (a *Agent) catalogLoop(ctx context.Context) {
	defer a.wg.Done()
	var reported uint64
	for {
		gen := a.healthGeneration()
		if gen != reported {
			if err := a.reportCatalog(ctx); err != nil {
				a.log.Warn().Err(err).Msg("report catalog; retrying")
			} else {
				reported = gen
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// healthGeneration changes whenever a slot becomes healthy.
func (a *Agent) healthGeneration() uint64 {
	var g uint64
	for _, s := range a.slots {
		g += s.healthy.Load()
	}
	return g
}

func (a *Agent) reportCatalog(ctx context.Context) error {
	var src *slot
	for _, s := range a.slots {
		if s.healthy.Load() > 0 {
			src = s
			break
		}
	}
	if src == nil {
		return errors.New("no healthy slot")
	}
	c, err := collectCatalog(ctx, src.comfy)
	if err != nil {
		return err
	}
	c.Agent, c.Pool = a.cfg.ID, a.cfg.Pool
	rules := promptRulesFrom(c.ObjectInfo)
	a.rules.Store(&rules)
	data, err := wire.EncodeCatalog(c)
	if err != nil {
		return err
	}
	msg, err := a.nc.RequestWithContext(ctx, wire.CatalogSubject(a.cfg.ID), data)
	if err != nil {
		return fmt.Errorf("send catalog: %w", err)
	}
	var ack wire.CatalogAck
	if err := json.Unmarshal(msg.Data, &ack); err != nil {
		return fmt.Errorf("catalog answer: %w", err)
	}
	if ack.Error != "" {
		return fmt.Errorf("broker refused catalog: %s", ack.Error)
	}
	a.log.Info().Msg("catalog reported")
	return nil
}

func collectCatalog(ctx context.Context, c *comfyclient.Client) (wire.Catalog, error) {
	var cat wire.Catalog
	var err error
	if cat.ObjectInfo, err = c.ObjectInfo(ctx); err != nil {
		return cat, fmt.Errorf("object_info: %w", err)
	}
	folders, err := c.Models(ctx)
	if err != nil {
		return cat, fmt.Errorf("models: %w", err)
	}
	cat.Models = map[string][]string{}
	for _, f := range folders {
		files, err := c.ModelFiles(ctx, f)
		if err != nil {
			continue // a folder ComfyUI lists but cannot read: leave it out
		}
		cat.Models[f] = files
	}
	if cat.Embeddings, err = c.Embeddings(ctx); err != nil {
		return cat, fmt.Errorf("embeddings: %w", err)
	}
	// Whole, as ComfyUI wrote it: the proxy serves it to the frontend,
	// which reads fields this agent does not know.
	if cat.SystemStats, err = c.SystemStatsJSON(ctx); err != nil {
		return cat, fmt.Errorf("system_stats: %w", err)
	}
	cat.At = time.Now().UTC()
	return cat, nil
}

// promptRules is what the agent knows of its ComfyUI for rewriting
// prompts (rewritePrompt).
func (a *Agent) promptRules() promptRules {
	if r := a.rules.Load(); r != nil {
		return *r
	}
	return defaultPromptRules()
}

// gpuStatsLoop refreshes the slots' GPU memory and utilisation.
func (a *Agent) gpuStatsLoop(ctx context.Context) {
	defer a.wg.Done()
	if a.cfg.GPUStats == nil {
		return
	}
	for {
		gpus, err := a.cfg.GPUStats(ctx)
		if err != nil {
			a.log.Debug().Err(err).Msg("read GPU stats")
		}
		for _, s := range a.slots {
			for i := range gpus {
				g := gpus[i]
				if (s.ep.GPUUUID != "" && g.UUID == s.ep.GPUUUID) || (s.ep.GPUUUID == "" && s.ep.GPUIndex >= 0 && g.Index == s.ep.GPUIndex) {
					s.mu.Lock()
					s.gpu = &g
					s.mu.Unlock()
				}
			}
		}
		if !sleep(ctx, a.cfg.GPUStatsInterval) {
			return
		}
	}
}

// scratchLoop measures the box's disk use for the heartbeat: the scratch
// folder (inputs, outputs, temp, the input cache and logs under it), and
// the input cache where it lives elsewhere.
func (a *Agent) scratchLoop(ctx context.Context) {
	defer a.wg.Done()
	cacheOutside := true
	if a.cfg.ScratchDir != "" {
		if rel, err := filepath.Rel(a.cfg.ScratchDir, a.inputs.dir); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			cacheOutside = false
		}
	}
	for {
		var n int64
		if a.cfg.ScratchDir != "" {
			used, err := (Scratch{Root: a.cfg.ScratchDir}).Usage(ctx)
			if err != nil && ctx.Err() == nil {
				a.log.Debug().Err(err).Msg("measure scratch")
			}
			n = used
		}
		if cacheOutside {
			n += a.inputs.Bytes()
		}
		a.scratchBytes.Store(n)
		if !sleep(ctx, a.cfg.ScratchInterval) {
			return
		}
	}
}
