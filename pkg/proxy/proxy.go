// Package proxy is the library behind atelier-proxy: the participant-facing
// ComfyUI API on mello.
//
// Participants use the ordinary ComfyUI web UI under a per-user prefix
// (/<user>/…). The proxy authenticates them against the registry and speaks
// ComfyUI's execution API itself (comfyui-api.md): POST /prompt publishes the
// job on the SUBMIT stream; /queue and /history are answered from the JOBS
// bucket (the broker is its only writer); /view serves outputs from the
// mello file store; /object_info and the model lists come from the pool's
// catalog; /ws turns JOBS transitions and the agents' live events into
// ComfyUI's WebSocket messages. Everything else under the prefix goes to
// Config.Fallback (the participant's own ComfyUI UI upstream).
//
// The proxy keeps no state of its own beyond caches, so several proxies may
// serve the same participants.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/atelier-run/atelier/internal/waitctx"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/retention"
)

// Defaults of Config.
const (
	DefaultAddr              = "127.0.0.1:8190"
	DefaultMaxPromptBytes    = 16 << 20
	DefaultMaxUploadBytes    = 100 << 20
	DefaultMaxSocketsPerUser = 32
	DefaultWSWriteTimeout    = 10 * time.Second
	DefaultWSSendQueue       = 1024
	DefaultViewIdleTimeout   = 5 * time.Minute
	DefaultAuthCacheTTL      = time.Minute
	DefaultRequestTimeout    = 10 * time.Second
)

// Config configures a Proxy. Zero values mean the documented defaults.
type Config struct {
	// Addr is the listen address of Start. Default 127.0.0.1:8190: the
	// proxy sits behind a TLS-terminating reverse proxy on mello.
	Addr string
	// Conn is the connection to the broker's NATS. Required. The proxy
	// neither drains nor closes it.
	Conn *nats.Conn
	// Registry authenticates participants. Required.
	Registry *registry.Registry
	// Store is mello's file store; /view serves outputs from it. Required.
	Store filestore.Store
	// MaxPromptBytes bounds a POST /prompt body (413 above). Default 16 MiB.
	// A body must also fit NATS's max payload once wrapped in a job.
	MaxPromptBytes int64
	// MaxUploadBytes is what /features and the WebSocket feature_flags
	// advertise as max_upload_size. Default 100 MiB, ComfyUI's default.
	MaxUploadBytes int64
	// MaxSocketsPerUser bounds a participant's open WebSockets (a browser
	// tab each); more are refused with 429. Default 32.
	MaxSocketsPerUser int
	// WSWriteTimeout bounds one WebSocket write; a socket that cannot take
	// a message in that time is dropped. Default 10 s.
	WSWriteTimeout time.Duration
	// WSSendQueue is how many messages may wait for one socket; a socket
	// that falls that far behind is dropped rather than slowing the
	// others. Default 1024.
	WSSendQueue int
	// WSOriginPatterns are extra allowed Origin host patterns for the
	// WebSocket upgrade (path.Match syntax, e.g. "*.example.org"). The
	// request's own host is always allowed.
	WSOriginPatterns []string
	// ViewIdleTimeout is how long a participant's cached view of JOBS
	// outlives its last use when no socket is open. Default 5 min.
	ViewIdleTimeout time.Duration
	// AuthCacheTTL is how long a successful password check is remembered
	// (bcrypt per request would cost more than the request). Default 1 min.
	AuthCacheTTL time.Duration
	// PositionInterval paces the queue-position updates sent to a
	// participant's sockets (QueuePositionMessage). Default 2 s.
	PositionInterval time.Duration
	// RequestTimeout bounds each NATS operation of a request. Default 10 s.
	RequestTimeout time.Duration
	// SpoolDir is where an upload waits while its sha256 is computed (the
	// name it gets depends on it): up to MaxUploadBytes per upload, several
	// at once, so a disk of mello rather than a RAM-backed /tmp; on the
	// file store's disk for the Disk store. Created when missing. Default:
	// os.TempDir().
	SpoolDir string
	// Quotas, when set, refuses uploads that would put a participant over
	// their disk quota on mello (413 with the reason). Nil: no quota.
	Quotas *retention.Quotas
	// Fallback serves authenticated requests under /<user>/ that the proxy
	// does not answer itself (the participant's ComfyUI UI upstream). The
	// request path still carries the /<user> prefix. Nil: 404.
	Fallback http.Handler
	// NewerErrors makes POST /prompt answer an unknown or missing node class
	// as 2026-era ComfyUI does (missing_node_type) for every pool. Without
	// it the proxy follows the pool's ComfyUI: a pool whose agents report
	// comfyui_version 0.38 or later gets missing_node_type (the frontend
	// bundled with that ComfyUI expects it), older ones invalid_prompt.
	NewerErrors bool
	// Logger receives the proxy's logs.
	Logger zerolog.Logger

	// testSignals, set by the package's tests, are the signals they wait
	// on; nil: all off.
	testSignals *testSignals
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.MaxPromptBytes == 0 {
		c.MaxPromptBytes = DefaultMaxPromptBytes
	}
	if c.MaxUploadBytes == 0 {
		c.MaxUploadBytes = DefaultMaxUploadBytes
	}
	if c.MaxSocketsPerUser == 0 {
		c.MaxSocketsPerUser = DefaultMaxSocketsPerUser
	}
	if c.WSWriteTimeout == 0 {
		c.WSWriteTimeout = DefaultWSWriteTimeout
	}
	if c.WSSendQueue == 0 {
		c.WSSendQueue = DefaultWSSendQueue
	}
	if c.ViewIdleTimeout == 0 {
		c.ViewIdleTimeout = DefaultViewIdleTimeout
	}
	if c.AuthCacheTTL == 0 {
		c.AuthCacheTTL = DefaultAuthCacheTTL
	}
	if c.PositionInterval == 0 {
		c.PositionInterval = 2 * time.Second
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.SpoolDir == "" {
		c.SpoolDir = os.TempDir()
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Conn == nil {
		errs = append(errs, errors.New("missing Conn"))
	}
	if c.Registry == nil {
		errs = append(errs, errors.New("missing Registry"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("missing Store"))
	}
	if c.MaxPromptBytes < 0 || c.MaxUploadBytes < 0 {
		errs = append(errs, errors.New("MaxPromptBytes and MaxUploadBytes must not be negative"))
	}
	if c.MaxSocketsPerUser < 0 || c.WSSendQueue < 0 {
		errs = append(errs, errors.New("MaxSocketsPerUser and WSSendQueue must not be negative"))
	}
	if c.WSWriteTimeout < 0 || c.ViewIdleTimeout < 0 || c.AuthCacheTTL < 0 || c.RequestTimeout < 0 {
		errs = append(errs, errors.New("timeouts must not be negative"))
	}
	for _, p := range c.WSOriginPatterns {
		if p == "" || p == "*" {
			errs = append(errs, fmt.Errorf("WSOriginPatterns: %q would allow any origin", p))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Proxy serves the participant-facing ComfyUI API.
type Proxy struct {
	cfg     Config
	log     zerolog.Logger
	js      jetstream.JetStream
	handler http.Handler

	// bg lives from New to Stop: the KV watches and subscriptions behind
	// the caches outlive any one request.
	bg     context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	testSignals *testSignals // never nil; zero: all off

	auth     *authCache
	catalogs *catalogCache
	views    *viewRegistry

	bucketsMu sync.Mutex
	buckets   map[string]jetstream.KeyValue

	srvMu   sync.Mutex
	srv     *http.Server
	ln      net.Listener
	serveCh chan error
	stopped bool
}

// New validates cfg and builds a Proxy. It does no network I/O: the broker
// may provision the streams and buckets after the proxy starts.
func New(cfg Config) (*Proxy, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.SpoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("proxy: upload spool directory: %w", err)
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("proxy: jetstream client: %w", err)
	}
	p := &Proxy{
		cfg:     cfg,
		log:     cfg.Logger.With().Str("component", "proxy").Logger(),
		js:      js,
		buckets: map[string]jetstream.KeyValue{},
	}
	p.testSignals = cfg.testSignals
	if p.testSignals == nil {
		p.testSignals = &testSignals{}
	}
	p.bg, p.cancel = context.WithCancel(context.Background())
	p.auth = newAuthCache(cfg.Registry, cfg.AuthCacheTTL)
	p.catalogs = newCatalogCache(p)
	p.views = newViewRegistry(p)
	p.handler = p.routes()
	p.wg.Add(1)
	go p.views.janitor()
	// After a reconnect (the broker restarted, say) the watches behind the
	// cached views may have lost their server-side consumers and can take
	// minutes to notice: drop the views, so that the next request or
	// socket (ComfyUI's frontend reconnects at once) builds a fresh one.
	prev := cfg.Conn.Opts.ReconnectedCB
	cfg.Conn.SetReconnectHandler(func(nc *nats.Conn) {
		if prev != nil {
			prev(nc)
		}
		p.log.Info().Msg("NATS reconnected: rebuilding participants' views of the job state")
		p.views.closeAll()
	})
	return p, nil
}

// Handler is the proxy's HTTP handler, for callers that run their own
// server. Stop must still be called to end the background watches.
func (p *Proxy) Handler() http.Handler { return p.handler }

// Start listens on Config.Addr and serves in the background.
func (p *Proxy) Start(ctx context.Context) error {
	p.srvMu.Lock()
	defer p.srvMu.Unlock()
	if p.srv != nil || p.stopped {
		return ErrAlreadyStarted
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", p.cfg.Addr)
	if err != nil {
		return fmt.Errorf("proxy: listen on %s: %w", p.cfg.Addr, err)
	}
	p.ln = ln
	p.srv = &http.Server{
		Handler:           p.handler,
		ReadHeaderTimeout: 10 * time.Second,
		// No ReadTimeout/WriteTimeout: /ws and large /view downloads are
		// long-lived; bodies are bounded by size instead.
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
	}
	p.serveCh = make(chan error, 1)
	go func() { p.serveCh <- p.srv.Serve(ln) }()
	p.log.Info().Str("addr", ln.Addr().String()).Msg("proxy listening")
	return nil
}

// Addr is the address the proxy listens on (after Start), else "".
func (p *Proxy) Addr() string {
	p.srvMu.Lock()
	defer p.srvMu.Unlock()
	if p.ln == nil {
		return ""
	}
	return p.ln.Addr().String()
}

// URL is http://<Addr> (after Start), else "".
func (p *Proxy) URL() string {
	if a := p.Addr(); a != "" {
		return "http://" + a
	}
	return ""
}

// Stop shuts the server down gracefully (bounded by ctx), closes every
// WebSocket and ends the background watches. It may be called without
// Start; calls after the first return nil at once.
func (p *Proxy) Stop(ctx context.Context) error {
	p.srvMu.Lock()
	if p.stopped {
		p.srvMu.Unlock()
		return nil
	}
	srv, serveCh := p.srv, p.serveCh
	p.stopped = true
	p.srvMu.Unlock()

	var err error
	if srv != nil {
		// Shutdown lets in-flight requests finish; it does not track
		// WebSockets (hijacked connections): cancelling bg below ends them.
		if serr := srv.Shutdown(ctx); serr != nil {
			err = fmt.Errorf("proxy: shutdown: %w", serr)
			_ = srv.Close()
		}
		if serr := <-serveCh; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, fmt.Errorf("proxy: serve: %w", serr))
		}
	}
	p.cancel()
	p.views.closeAll()
	if werr := waitctx.Wait(ctx, p.wg.Wait); werr != nil {
		err = errors.Join(err, fmt.Errorf("proxy: wait for background work: %w", werr))
	}
	return err
}

// bucket returns a handle on a KV bucket, looked up once it exists.
func (p *Proxy) bucket(ctx context.Context, name string) (jetstream.KeyValue, error) {
	p.bucketsMu.Lock()
	defer p.bucketsMu.Unlock()
	if kv, ok := p.buckets[name]; ok {
		return kv, nil
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
	defer cancel()
	kv, err := p.js.KeyValue(ctx, name)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("%w: %s: %w", errNoBucket, name, err)
		}
		return nil, fmt.Errorf("open bucket %s: %w", name, err)
	}
	p.buckets[name] = kv
	return kv, nil
}
