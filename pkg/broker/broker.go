package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Broker is a running broker. Create it with New, then Start and Stop.
type Broker struct {
	cfg    Config
	log    zerolog.Logger
	layout datalayout.Layout

	embedded *natsembed.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	res      *wire.Resources

	// core runs every state change on one goroutine, so the dispatcher's
	// queues, the job index and the agents table need no locks. NATS
	// callbacks hand their work to it with do.
	core   chan func()
	state  *state
	subs   []*nats.Subscription
	consum []jetstream.ConsumeContext

	files    *fileService
	registry *registry.Registry

	mux        *http.ServeMux
	adminToken string
	httpSrv    *http.Server
	httpLn     net.Listener

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started atomic.Bool
	ready   atomic.Bool

	testSignals testSignals
}

// New validates the configuration and returns a broker ready to Start.
func New(cfg Config) (*Broker, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Store == nil {
		cfg.Store = diskstore.New(datalayout.New(cfg.DataDir))
	}
	return &Broker{
		cfg:    cfg,
		log:    cfg.Logger.With().Str("component", "broker").Logger(),
		layout: datalayout.New(cfg.DataDir),
		core:   make(chan func()),
		state:  newState(cfg),
		mux:    http.NewServeMux(),
	}, nil
}

// Handle registers an HTTP handler on the broker's HTTP server (the
// dashboard and metrics mount themselves here). Call it before Start.
func (b *Broker) Handle(pattern string, h http.Handler) { b.mux.Handle(pattern, h) }

// Conn is the broker's own NATS connection (valid after Start), for
// in-process companions such as the dashboard.
func (b *Broker) Conn() *nats.Conn { return b.nc }

// Store is where participants' files live.
func (b *Broker) Store() filestore.Store { return b.cfg.Store }

// DataDir is the broker's data directory.
func (b *Broker) DataDir() string { return b.cfg.DataDir }

// Start connects to (or embeds) NATS, provisions the wire contract, starts
// the core loop and the subscriptions, and serves HTTP. It returns once the
// broker takes jobs.
func (b *Broker) Start(ctx context.Context) (err error) {
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("broker: already started")
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	b.cancel = cancel
	b.state.since = time.Now()
	defer func() {
		if err != nil {
			_ = b.shutdown(context.Background())
		}
	}()

	if err := b.layout.Ensure(); err != nil {
		return fmt.Errorf("broker: data dir: %w", err)
	}
	b.registry, err = registry.Open(registry.Config{Path: b.layout.RegistryPath(), Logger: &b.log})
	if err != nil {
		return fmt.Errorf("broker: registry: %w", err)
	}
	if err := b.connect(ctx); err != nil {
		return err
	}
	b.res, err = wire.Provision(ctx, b.js, b.cfg.Limits)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if err := b.loadSettings(ctx); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	b.files, err = newFileService(ctx, b)
	if err != nil {
		return err
	}

	b.wg.Add(1)
	go b.runCore(runCtx)

	if err := b.subscribe(runCtx); err != nil {
		return err
	}
	if b.adminToken, err = b.loadAdminToken(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if err := b.serveHTTP(); err != nil {
		return err
	}
	b.ready.Store(true)
	b.log.Info().Str("nats", b.ClientURL()).Str("http", b.HTTPURL()).Msg("broker started")
	return nil
}

func (b *Broker) connect(ctx context.Context) error {
	var err error
	if b.cfg.NATSURL == "" {
		b.embedded, err = natsembed.Start(ctx, natsembed.Config{
			StoreDir:   b.layout.NATSStoreDir(),
			Host:       b.cfg.NATSHost,
			Port:       b.cfg.NATSPort,
			MaxMemory:  b.cfg.NATSMaxMemory,
			MaxStore:   b.cfg.NATSMaxStore,
			SyncAlways: b.cfg.NATSSyncAlways,
			User:       b.cfg.NATSUser,
			Password:   b.cfg.NATSPassword,
			Logger:     b.log,
		})
		if err != nil {
			return fmt.Errorf("broker: %w", err)
		}
		b.nc, err = b.embedded.Connect(nats.MaxReconnects(-1))
	} else {
		opts := []nats.Option{nats.Name("atelier-broker"), nats.MaxReconnects(-1)}
		if b.cfg.NATSUser != "" {
			opts = append(opts, nats.UserInfo(b.cfg.NATSUser, b.cfg.NATSPassword))
		}
		b.nc, err = nats.Connect(b.cfg.NATSURL, opts...)
	}
	if err != nil {
		return fmt.Errorf("broker: connect to NATS: %w", err)
	}
	b.js, err = jetstream.New(b.nc)
	if err != nil {
		return fmt.Errorf("broker: jetstream: %w", err)
	}
	return nil
}

// ClientURL is the NATS URL agents and proxies connect to.
func (b *Broker) ClientURL() string {
	if b.embedded != nil {
		return b.embedded.ClientURL()
	}
	return b.cfg.NATSURL
}

// HTTPURL is the base URL of the broker's HTTP server.
func (b *Broker) HTTPURL() string {
	if b.httpLn == nil {
		return ""
	}
	return "http://" + b.httpLn.Addr().String()
}

// Stop stops taking work, closes the connection and the embedded server.
// State is durable in JetStream; a restarted broker carries on.
func (b *Broker) Stop(ctx context.Context) error {
	if !b.started.Load() {
		return nil
	}
	b.ready.Store(false)
	if b.httpSrv != nil {
		_ = b.httpSrv.Shutdown(ctx)
	}
	err := b.shutdown(ctx)
	b.log.Info().Msg("broker stopped")
	return err
}

// shutdown stops what Start started; it returns what did not stop within
// ctx.
func (b *Broker) shutdown(ctx context.Context) error {
	var err error
	for _, s := range b.subs {
		_ = s.Unsubscribe()
	}
	for _, c := range b.consum {
		c.Stop()
	}
	if b.files != nil {
		err = b.files.stop(ctx)
	}
	if b.cancel != nil {
		b.cancel()
	}
	b.wg.Wait()
	if b.nc != nil {
		b.nc.Close()
	}
	if b.embedded != nil {
		_ = b.embedded.Stop(context.Background())
	}
	return err
}

// Run starts a broker and blocks until ctx is done, then stops it.
func Run(ctx context.Context, cfg Config) error {
	b, err := New(cfg)
	if err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return b.Stop(stopCtx)
}

// runCore executes state changes one at a time and does housekeeping.
func (b *Broker) runCore(ctx context.Context) {
	defer b.wg.Done()
	tick := time.NewTicker(b.cfg.TickInterval)
	defer tick.Stop()
	tickets := time.NewTicker(b.cfg.TicketCheckInterval)
	defer tickets.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case fn := <-b.core:
			fn()
		case <-tick.C:
			b.housekeep(ctx)
		case <-tickets.C:
			b.checkTickets(ctx)
			b.refreshUserCaps()
			b.dispatchAll(ctx) // a raised cap may let a user run more
			b.testSignals.ticketsChecked.Signal(struct{}{})
		}
	}
}

// errStopped is returned by do when the broker stops first.
var errStopped = errors.New("broker: stopped")

// do runs fn on the core goroutine and waits for it; errStopped when ctx
// ends first or while fn runs (fn's own work may have been cut short).
// Once the core took fn, do waits for fn to end even past ctx: the core
// runs fn the moment it takes it, and a caller returning before fn ends
// would read what fn is still writing.
func (b *Broker) do(ctx context.Context, fn func()) error {
	done := make(chan struct{})
	select {
	case b.core <- func() { defer close(done); fn() }:
	case <-ctx.Done():
		return errStopped
	}
	<-done
	if ctx.Err() != nil {
		return errStopped
	}
	return nil
}

// subscribe starts the intake of SUBMIT, the REPORTS consumer and the
// claim, heartbeat and catalog subscriptions.
func (b *Broker) subscribe(ctx context.Context) error {
	intake, err := b.js.OrderedConsumer(ctx, wire.StreamSubmit, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("broker: intake consumer: %w", err)
	}
	cc, err := intake.Consume(func(msg jetstream.Msg) {
		_ = b.do(ctx, func() { b.intake(ctx, msg) })
	})
	if err != nil {
		return fmt.Errorf("broker: intake: %w", err)
	}
	b.consum = append(b.consum, cc)

	reports, err := wire.EnsureReportsConsumer(ctx, b.res.Reports)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	cc, err = reports.Consume(func(msg jetstream.Msg) {
		if err := b.do(ctx, func() { b.applyReportMsg(ctx, msg) }); err != nil {
			return // stopping: the report is redelivered to the next broker
		}
		if err := msg.Ack(); err != nil {
			b.log.Warn().Err(err).Msg("ack report")
		}
	}, jetstream.PullMaxMessages(64))
	if err != nil {
		return fmt.Errorf("broker: reports: %w", err)
	}
	b.consum = append(b.consum, cc)

	if err := b.subscribeDeadTickets(ctx); err != nil {
		return err
	}
	if err := b.subscribeAPI(ctx); err != nil {
		return err
	}
	for subj, h := range map[string]nats.MsgHandler{
		wire.ClaimSubjects:     func(m *nats.Msg) { b.handleClaim(ctx, m) },
		wire.HeartbeatSubjects: func(m *nats.Msg) { b.handleHeartbeat(ctx, m) },
		wire.CatalogSubjects:   func(m *nats.Msg) { b.handleCatalog(ctx, m) },
	} {
		s, err := b.nc.QueueSubscribe(subj, "atelier-broker", h)
		if err != nil {
			return fmt.Errorf("broker: subscribe %s: %w", subj, err)
		}
		b.subs = append(b.subs, s)
	}
	return b.nc.FlushTimeout(5 * time.Second)
}
