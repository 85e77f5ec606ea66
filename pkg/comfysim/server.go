package comfysim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Server is one simulated ComfyUI instance: HTTP routes, WebSocket hub,
// prompt queue, single execution worker, history and output cache.
//
// The worker starts in New, so Handler can be mounted on any http.Server
// (httptest included) without calling Start.
type Server struct {
	cfg      Config
	log      zerolog.Logger
	nodes    map[string]*nodeDef
	nodeList []*nodeDef
	handler  http.Handler
	hub      *hub

	// mu guards the queue, the running item, history, the number counter,
	// the fault and the execution state that the WebSocket connect message
	// reads. WebSocket frames are queued while mu is held so that every
	// socket sees events in the order the state changed.
	mu      sync.Mutex
	number  int64
	pending promptHeap
	running *queueItem
	// runningNode is the display id of the node executing now, "" when
	// none (ComfyUI's server.last_node_id).
	runningNode string
	// interrupt cancels the running prompt's execution context.
	interrupt context.CancelCauseFunc
	history   *historyStore
	created   map[string]time.Time // prompt id → when it was queued (jobs API)
	started   time.Time            // stands in for the simulated model files' times
	fault     Fault
	faultArm  time.Time // when the current fault was set (slow start)
	wake      chan struct{}

	cache *outputCache

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	srvMu    sync.Mutex
	httpSrv  *http.Server
	listener net.Listener
	closed   bool
	// closeDone is closed when Close has finished, so concurrent callers
	// (a crash fault closes from the worker side) all wait for it.
	closeDone chan struct{}
	closeErr  error
}

// errInterrupted is the cancellation cause of POST /interrupt.
var errInterrupted = errors.New("processing interrupted")

// errClosed is the cancellation cause of Close.
var errClosed = errors.New("simulator closed")

// New validates cfg, prepares the directories and starts the execution
// worker. Call Close to stop it.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if !cfg.KeepTemp {
		// ComfyUI wipes its temp directory at startup.
		if err := os.RemoveAll(cfg.TempDir); err != nil {
			return nil, fmt.Errorf("comfysim: cleaning temp directory: %w", err)
		}
	}
	for _, d := range []string{cfg.InputDir, cfg.OutputDir, cfg.TempDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("comfysim: creating %s: %w", d, err)
		}
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With().Str("component", "comfysim").Logger(),
		nodes:   map[string]*nodeDef{},
		hub:     newHub(),
		history: newHistoryStore(),
		created: map[string]time.Time{},
		cache:   newOutputCache(),
		wake:    make(chan struct{}, 1),
		started: time.Now(),

		closeDone: make(chan struct{}),
	}
	s.nodeList = append(append(buildNodeDefs(), stringNodeDefs()...), bigFileNodeDef())
	for _, d := range s.nodeList {
		s.nodes[d.name] = d
	}
	s.handler = s.routes()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.worker(s.ctx)
	}()
	return s, nil
}

// Handler returns the HTTP handler serving the ComfyUI API, WebSocket
// included.
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens on addr (e.g. "127.0.0.1:8188" or "127.0.0.1:0") and serves
// in the background until ctx is done or Close is called.
func (s *Server) Start(ctx context.Context, addr string) error {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.closed {
		return errors.New("comfysim: server closed")
	}
	if s.httpSrv != nil {
		return errors.New("comfysim: already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("comfysim: listen %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
	}
	s.httpSrv, s.listener = srv, ln
	s.log.Info().Str("addr", ln.Addr().String()).Msg("listening")
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("serve")
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = s.Close()
		case <-s.ctx.Done():
		}
	}()
	return nil
}

// URL is the base URL ("http://127.0.0.1:port") after Start, "" before.
func (s *Server) URL() string {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.listener == nil {
		return ""
	}
	return "http://" + s.listener.Addr().String()
}

// Close stops the listener, interrupts the running prompt, closes all
// WebSockets and waits for the worker. It is safe to call more than once.
func (s *Server) Close() error {
	s.srvMu.Lock()
	if s.closed {
		s.srvMu.Unlock()
		<-s.closeDone
		return s.closeErr
	}
	s.closed = true
	srv := s.httpSrv
	s.srvMu.Unlock()

	s.mu.Lock()
	if s.interrupt != nil {
		s.interrupt(errClosed)
	}
	s.mu.Unlock()
	s.cancel()

	var err error
	if srv != nil {
		// Hijacked WebSocket connections are not tracked by http.Server,
		// so the hub closes them.
		err = srv.Close()
	}
	s.hub.closeAll()
	s.wg.Wait()
	if !s.cfg.KeepTemp {
		// ComfyUI wipes its temp directory at shutdown too.
		if rerr := os.RemoveAll(s.cfg.TempDir); rerr != nil && err == nil {
			err = rerr
		}
	}
	if err != nil {
		err = fmt.Errorf("comfysim: close: %w", err)
	}
	s.closeErr = err
	close(s.closeDone)
	return err
}

// Done is closed once the simulator has closed, by Close or by a simulated
// crash: what a supervisor watching a ComfyUI process sees as its exit.
func (s *Server) Done() <-chan struct{} { return s.closeDone }

// InputDir, OutputDir and TempDir return the resolved directories.
func (s *Server) InputDir() string { return s.cfg.InputDir }

// OutputDir returns the resolved output directory.
func (s *Server) OutputDir() string { return s.cfg.OutputDir }

// TempDir returns the resolved temp directory.
func (s *Server) TempDir() string { return s.cfg.TempDir }

// dirByType maps a ComfyUI folder type to its directory ("" if unknown).
func (s *Server) dirByType(typ string) string {
	switch typ {
	case "input":
		return s.cfg.InputDir
	case "output":
		return s.cfg.OutputDir
	case "temp":
		return s.cfg.TempDir
	}
	return ""
}

// within reports whether path is base or inside it, after cleaning, the
// equivalent of ComfyUI's os.path.commonpath checks.
func within(base, path string) bool {
	rel, err := filepath.Rel(base, path)
	if err != nil {
		return false
	}
	return rel == "." || (rel != ".." && !startsWithDotDot(rel))
}

func startsWithDotDot(rel string) bool {
	return len(rel) >= 3 && rel[:3] == ".."+string(filepath.Separator)
}
