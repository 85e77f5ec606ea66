package filetransfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/atelier-run/atelier/internal/waitctx"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Conn is the broker's NATS connection. Required.
	Conn *nats.Conn
	// SubjectPrefix of the download subjects. Default DefaultGetPrefix.
	SubjectPrefix string
	// Store serves the files. Required.
	Store filestore.Store
	// ChunkSize is the largest chunk served. Default DefaultChunkSize, capped
	// by the connection's max payload.
	ChunkSize int
	// MaxConcurrent bounds requests handled at once (each holds at most one
	// chunk in memory). Default 32.
	MaxConcurrent int
	// RequestTimeout bounds the handling of one request (hashing a file
	// whose sha256 the store does not know included). Default 5 minutes.
	RequestTimeout time.Duration
	// Authorize decides whether agentID may read ref. Default: input files
	// only (agents fetch the inputs of their jobs).
	Authorize func(agentID string, ref filestore.Ref) error
	// Logger. Default: disabled.
	Logger *zerolog.Logger
}

func (c *ServerConfig) withDefaults() (ServerConfig, error) {
	cfg := *c
	if cfg.Conn == nil {
		return cfg, errors.New("filetransfer: ServerConfig.Conn is required")
	}
	if cfg.Store == nil {
		return cfg, errors.New("filetransfer: ServerConfig.Store is required")
	}
	if cfg.SubjectPrefix == "" {
		cfg.SubjectPrefix = DefaultGetPrefix
	}
	if strings.ContainsAny(cfg.SubjectPrefix, "*> \t") || strings.HasSuffix(cfg.SubjectPrefix, ".") {
		return cfg, fmt.Errorf("filetransfer: bad SubjectPrefix %q", cfg.SubjectPrefix)
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if max := maxChunkFor(cfg.Conn); cfg.ChunkSize > max {
		cfg.ChunkSize = max
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 32
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Minute
	}
	if cfg.Authorize == nil {
		cfg.Authorize = func(_ string, ref filestore.Ref) error {
			if ref.Kind == filestore.KindInput {
				return nil
			}
			return fmt.Errorf("%w: agents fetch input files only", ErrForbidden)
		}
	}
	if cfg.Logger == nil {
		l := zerolog.Nop()
		cfg.Logger = &l
	}
	return cfg, nil
}

// Server is the broker side of downloads: it answers stat and chunk
// requests from the Store. It keeps no per-download state, so any number of
// brokers may serve the same store (subscribe with the same prefix).
type Server struct {
	cfg ServerConfig
	log zerolog.Logger

	mu      sync.Mutex
	started bool
	subs    []*nats.Subscription
	sem     chan struct{}
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
	// bufs recycles chunk buffers: a reply's payload is copied into the
	// NATS client's buffer before RespondMsg returns, so a multi-GB
	// download does not leave a chunk of garbage per request.
	bufs sync.Pool
}

// NewServer validates cfg and returns a Server; Start begins serving.
func NewServer(cfg ServerConfig) (*Server, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: c, log: c.Logger.With().Str("component", "filetransfer.server").Logger()}
	s.bufs.New = func() any { b := make([]byte, c.ChunkSize); return &b }
	return s, nil
}

// Start subscribes (in the queue group "filetransfer-server", so several
// brokers share the load).
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("filetransfer: server already started")
	}
	s.sem = make(chan struct{}, s.cfg.MaxConcurrent)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	p := s.cfg.SubjectPrefix
	for _, verb := range []string{"stat", "chunk"} {
		sub, err := s.cfg.Conn.QueueSubscribe(p+".*."+verb, "filetransfer-server", s.dispatch)
		if err != nil {
			s.unsubscribeLocked()
			return fmt.Errorf("filetransfer: subscribe %s.*.%s: %w", p, verb, err)
		}
		_ = sub.SetPendingLimits(-1, 16<<20)
		s.subs = append(s.subs, sub)
	}
	if err := flush(ctx, s.cfg.Conn); err != nil {
		s.unsubscribeLocked()
		return fmt.Errorf("filetransfer: flush subscriptions: %w", err)
	}
	s.started = true
	return nil
}

// Stop unsubscribes, cancels the requests in progress and waits for them
// to end, or for ctx (then it returns ctx's error).
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.started {
		s.mu.Unlock()
		return nil
	}
	s.started = false
	s.unsubscribeLocked()
	s.mu.Unlock()
	s.cancel()
	return stopWait(ctx, s.wg.Wait)
}

// stopWait waits for a Stop's goroutines, or for ctx to end.
func stopWait(ctx context.Context, wait func()) error {
	if err := waitctx.Wait(ctx, wait); err != nil {
		return fmt.Errorf("filetransfer: stop: %w", err)
	}
	return nil
}

func (s *Server) unsubscribeLocked() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.subs = nil
}

// dispatch handles requests concurrently, up to MaxConcurrent; beyond that
// it blocks the subscription, which is the back-pressure.
func (s *Server) dispatch(m *nats.Msg) {
	s.sem <- struct{}{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.sem }()
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
		defer cancel()
		if strings.HasSuffix(m.Subject, ".stat") {
			s.stat(ctx, m)
		} else {
			s.chunk(ctx, m)
		}
	}()
}

func (s *Server) authorize(m *nats.Msg, ref filestore.Ref) (filestore.Ref, string, error) {
	agent, ok := agentFromSubject(s.cfg.SubjectPrefix, m.Subject)
	if !ok {
		return ref, "", fmt.Errorf("%w: bad subject", ErrBadRequest)
	}
	ref, err := ref.Validate()
	if err != nil {
		return ref, agent, err
	}
	if err := s.cfg.Authorize(agent, ref); err != nil {
		return ref, agent, fmt.Errorf("%w: %w", ErrForbidden, err)
	}
	return ref, agent, nil
}

func (s *Server) stat(ctx context.Context, m *nats.Msg) {
	var req StatRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		_ = respondJSON(m, StatReply{Error: toWire(fmt.Errorf("%w: %v", ErrBadRequest, err))})
		return
	}
	ref, agent, err := s.authorize(m, req.Ref)
	if err != nil {
		s.log.Warn().Err(err).Str("agent", agent).Stringer("ref", req.Ref).Msg("stat refused")
		_ = respondJSON(m, StatReply{Error: toWire(err)})
		return
	}
	info, err := s.cfg.Store.Stat(ctx, ref)
	if err == nil && info.SHA256 == "" {
		info.SHA256, err = filestore.SHA256Of(ctx, s.cfg.Store, ref)
	}
	if err != nil {
		if !errors.Is(err, filestore.ErrNotFound) {
			s.log.Error().Err(err).Stringer("ref", ref).Msg("stat failed")
		}
		_ = respondJSON(m, StatReply{Error: toWire(err)})
		return
	}
	_ = respondJSON(m, StatReply{Info: info, ChunkSize: s.cfg.ChunkSize})
}

func (s *Server) chunk(ctx context.Context, m *nats.Msg) {
	fail := func(err error) {
		reply := nats.NewMsg(m.Reply)
		w := toWire(err)
		data, _ := json.Marshal(w)
		reply.Header.Set(HeaderError, string(data))
		_ = m.RespondMsg(reply)
	}
	var req ChunkRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		fail(fmt.Errorf("%w: %v", ErrBadRequest, err))
		return
	}
	if req.Offset < 0 || req.Length <= 0 || req.Length > s.cfg.ChunkSize {
		fail(fmt.Errorf("%w: offset %d length %d", ErrBadRequest, req.Offset, req.Length))
		return
	}
	ref, _, err := s.authorize(m, req.Ref)
	if err != nil {
		fail(err)
		return
	}
	f, err := s.cfg.Store.Open(ctx, ref)
	if err != nil {
		fail(err)
		return
	}
	defer f.Close()
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := (*bp)[:req.Length]
	n, err := f.ReadAt(buf, req.Offset)
	if err != nil && !errors.Is(err, io.EOF) {
		s.log.Error().Err(err).Stringer("ref", ref).Msg("read failed")
		fail(err)
		return
	}
	reply := nats.NewMsg(m.Reply)
	reply.Header.Set(HeaderOffset, strconv.FormatInt(req.Offset, 10))
	reply.Header.Set(HeaderCRC32C, strconv.FormatUint(uint64(crc32c(buf[:n])), 16))
	reply.Data = buf[:n]
	_ = m.RespondMsg(reply)
}
