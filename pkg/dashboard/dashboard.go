package dashboard

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"sync"

	"github.com/atelier-run/atelier/internal/waitctx"
	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/brokerapi"
	"github.com/atelier-run/atelier/pkg/metrics"
	"github.com/rs/zerolog"
)

//go:embed assets
var assetsFS embed.FS

// Dashboard is the instructor dashboard: an http.Handler for everything
// under Config.Prefix, fed by watchers that Start runs.
type Dashboard struct {
	cfg   Config
	log   zerolog.Logger
	model *model
	auth  *sessions
	thumb *thumbCache
	mux   *http.ServeMux
	pages *template.Template

	refresh chan struct{}

	mu      sync.Mutex
	started bool
	api     *brokerapi.Client // on the connection Start watches
	cancel  context.CancelFunc
	runCtx  context.Context
	wg      sync.WaitGroup
}

// New validates cfg and returns a Dashboard; call Start to feed it.
func New(cfg Config) (*Dashboard, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	pages, err := template.ParseFS(assetsFS, "assets/*.html")
	if err != nil {
		return nil, err
	}
	d := &Dashboard{
		cfg: cfg, log: cfg.Logger.With().Str("component", "dashboard").Logger(),
		auth: newSessions(cfg.SessionTTL, cfg.Now), thumb: newThumbCache(256),
		pages: pages, refresh: make(chan struct{}, 1),
	}
	d.model = newModel(&d.cfg)
	d.routes()
	return d, nil
}

// Mount creates a Dashboard for b and registers it on b's HTTP server under
// cfg.Prefix, and met (when not nil) on /metrics. Call it after broker.New
// and before b.Start; call Start after b.Start (or let the first request
// start it). cfg.Conn and cfg.Status default to b's.
func Mount(b *broker.Broker, cfg Config, met *metrics.Metrics) (*Dashboard, error) {
	if cfg.Conn == nil {
		cfg.Conn = b.Conn
	}
	if cfg.Status == nil {
		cfg.Status = b.Status
	}
	d, err := New(cfg)
	if err != nil {
		return nil, err
	}
	b.Handle(d.cfg.Prefix, d)
	if met != nil {
		met.SetConn(b.Conn)
		b.Handle("GET /metrics", met)
	}
	return d, nil
}

// Start starts the watchers on cfg.Conn(). It returns at once; the picture
// fills in as the buckets replay. Starting twice is a no-op.
func (d *Dashboard) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.started {
		return nil
	}
	nc := d.cfg.Conn()
	if nc == nil {
		return errors.New("dashboard: no NATS connection yet (start the broker first)")
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	api := brokerapi.New(brokerapi.NATSTransport{Conn: nc}, brokerapi.WithTimeout(d.cfg.RequestTimeout))
	if err := d.watch(runCtx, nc, api); err != nil {
		cancel()
		return err
	}
	d.started, d.api, d.cancel, d.runCtx = true, api, cancel, runCtx
	return nil
}

// done is closed when the dashboard stops.
func (d *Dashboard) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.runCtx == nil {
		return nil
	}
	return d.runCtx.Done()
}

// Stop stops the watchers and waits for them to end, the last save of
// the queue-depth series included, or for ctx to end (then it returns
// ctx's error and the watchers finish on their own).
func (d *Dashboard) Stop(ctx context.Context) error {
	d.mu.Lock()
	cancel := d.cancel
	d.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if err := waitctx.Wait(ctx, d.wg.Wait); err != nil {
		return fmt.Errorf("dashboard: stop: %w", err)
	}
	return nil
}

// client returns the broker API client, starting the watchers on first
// use: a broker that mounts the dashboard but never calls Start still
// gets a working one (the HTTP server only serves after the broker
// connected).
func (d *Dashboard) client(r *http.Request) (*brokerapi.Client, error) {
	d.mu.Lock()
	api := d.api
	d.mu.Unlock()
	if api != nil {
		return api, nil
	}
	if err := d.Start(r.Context()); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.api, nil
}

// Snapshot returns the current picture.
func (d *Dashboard) Snapshot() Snapshot { return d.model.snapshot() }

// ServeHTTP serves the dashboard.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	if _, err := d.client(r); err != nil {
		http.Error(w, "dashboard not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	d.mux.ServeHTTP(w, r)
}

func (d *Dashboard) routes() {
	p := d.cfg.Prefix
	mux := http.NewServeMux()
	static, _ := fs.Sub(assetsFS, "assets")
	mux.Handle("GET "+p+"static/", http.StripPrefix(p+"static/", staticHandler(static)))
	mux.HandleFunc("GET "+p+"{$}", d.handleIndex)
	mux.HandleFunc("GET "+p+"login", d.handleLoginForm)
	mux.HandleFunc("POST "+p+"login", d.handleLogin)
	mux.HandleFunc("POST "+p+"logout", d.requireSession(d.handleLogout, true))
	mux.HandleFunc("GET "+p+"api/snapshot", d.requireInstructor(d.handleSnapshot))
	mux.HandleFunc("GET "+p+"api/events", d.requireSession(d.handleEvents, false))
	mux.HandleFunc("POST "+p+"api/{op}", d.requireSession(d.handleAction, true))
	mux.HandleFunc("GET "+p+"file", d.requireSession(d.handleFile, false))
	mux.HandleFunc("GET "+p+"thumb", d.requireSession(d.handleThumb, false))
	d.mux = mux
}

// staticHandler serves the embedded assets; they change only with the
// binary, so a short cache is safe and reloads stay cheap.
func staticHandler(static fs.FS) http.Handler {
	fsrv := http.FileServerFS(static)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".html") || r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "private, max-age=300")
		fsrv.ServeHTTP(w, r)
	})
}

// askRefresh makes the poller ask the broker API again now (after an
// action, so the page shows its effect without waiting a poll interval).
func (d *Dashboard) askRefresh() {
	select {
	case d.refresh <- struct{}{}:
	default:
	}
}
