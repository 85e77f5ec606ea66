package filetransfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// ReceiverConfig configures a Receiver. Zero values take the documented
// defaults.
type ReceiverConfig struct {
	// Conn is the broker's NATS connection. Required.
	Conn *nats.Conn
	// SubjectPrefix of the upload subjects. Default DefaultPutPrefix.
	SubjectPrefix string
	// Store receives committed files. Required. A Store that implements
	// filestore.Importer (Disk does) takes the staged file by rename.
	Store filestore.Store
	// StagingDir holds partial uploads, so they survive a broker restart.
	// Required. Put it on the same file system as the store so a commit is a
	// rename, not a copy.
	StagingDir string
	// ChunkSize is the largest chunk accepted (and advertised to senders).
	// Default DefaultChunkSize, capped by the connection's max payload.
	ChunkSize int
	// Window is the number of chunks a sender may have in flight, advertised
	// in the open reply. Default: DefaultWindowBytes worth of chunks (6 of
	// 2 MiB on the embedded broker, 12 of ~1 MiB on a default NATS server).
	Window int
	// MaxTransfers bounds the transfers held open in memory at once; an open
	// beyond it is answered busy. With Window and ChunkSize it bounds the
	// receiver's memory: MaxTransfers × (Window+2) × ChunkSize. Default 64.
	MaxTransfers int
	// MaxFileSize refuses larger uploads. Default 64 GiB.
	MaxFileSize int64
	// BufferedStaging writes staged chunks through the page cache instead
	// of with direct I/O (which is used where the file system supports
	// it; see staging.go). Default false.
	BufferedStaging bool
	// PendingBytes bounds what the NATS client buffers for the chunk
	// subscription before dropping (senders then time out and resend).
	// Default 64 MiB.
	PendingBytes int
	// IdleTimeout closes the file of a transfer that saw no message for this
	// long; its staged data stays on disk for a resume. Default 2 minutes.
	IdleTimeout time.Duration
	// StagingTTL deletes staged uploads untouched for this long. Default 24 h.
	StagingTTL time.Duration
	// Authorize decides whether agentID may upload to ref (called on open and
	// on commit, with the final name). The agent id comes from the subject,
	// which NATS permissions tie to the agent's credentials. Default: allow
	// output and temp files, refuse input files.
	Authorize func(agentID string, ref filestore.Ref) error
	// Admit, when set, decides on each open whether an upload of size bytes
	// to ref may go ahead: the participant's disk quota (see
	// retention.Quotas.Check). An error wrapping filestore.ErrQuotaExceeded
	// reaches the sender as such and is not retried.
	Admit func(agentID string, ref filestore.Ref, size int64) error
	// Stored, when set, is told about every new file committed into the
	// Store (to count it against the quota at once, say); not about an
	// upload answered with a file of the same content already there. It
	// must not block.
	Stored func(agentID string, info filestore.Info)
	// Logger. Default: disabled.
	Logger *zerolog.Logger
}

func (c *ReceiverConfig) withDefaults() (ReceiverConfig, error) {
	cfg := *c
	if cfg.Conn == nil {
		return cfg, errors.New("filetransfer: ReceiverConfig.Conn is required")
	}
	if cfg.Store == nil {
		return cfg, errors.New("filetransfer: ReceiverConfig.Store is required")
	}
	if cfg.StagingDir == "" {
		return cfg, errors.New("filetransfer: ReceiverConfig.StagingDir is required")
	}
	if cfg.SubjectPrefix == "" {
		cfg.SubjectPrefix = DefaultPutPrefix
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
	cfg.Window = windowFor(cfg.Window, cfg.ChunkSize)
	if cfg.MaxTransfers <= 0 {
		cfg.MaxTransfers = 64
	}
	if cfg.MaxFileSize <= 0 {
		cfg.MaxFileSize = 64 << 30
	}
	if cfg.PendingBytes <= 0 {
		cfg.PendingBytes = 64 << 20
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.StagingTTL <= 0 {
		cfg.StagingTTL = 24 * time.Hour
	}
	if cfg.Authorize == nil {
		cfg.Authorize = func(_ string, ref filestore.Ref) error {
			if ref.Kind == filestore.KindOutput || ref.Kind == filestore.KindTemp {
				return nil
			}
			return fmt.Errorf("%w: agents upload outputs and temp files only", ErrForbidden)
		}
	}
	if cfg.Logger == nil {
		l := zerolog.Nop()
		cfg.Logger = &l
	}
	return cfg, nil
}

// writebackBytes is how much staged data accumulates before the receiver
// starts its writeback (see startWriteback): the commit's fsync then has at
// most this much left to write instead of the whole file.
const writebackBytes = 8 << 20

// maxChunkFor leaves 8 KiB of the server's max payload for headers.
func maxChunkFor(nc *nats.Conn) int {
	mp := nc.MaxPayload()
	if mp <= 0 {
		return DefaultChunkSize
	}
	return int(mp) - 8<<10
}

// Receiver is the broker side of uploads: it stages chunks on disk, verifies
// the whole file's sha256 and moves it into the Store.
//
// Chunks of one transfer are processed in order by one goroutine per open
// transfer (different transfers proceed in parallel); a chunk that does not
// start where the staged data ends is refused with the expected offset, so
// the sender goes back to it (go-back-N).
//
// Staging state lives under StagingDir/<agent>/<transfer>.{part,meta,hash}.
// Receivers on several brokers would not share it: run one per staging dir.
type Receiver struct {
	cfg ReceiverConfig
	log zerolog.Logger

	mu        sync.Mutex
	started   bool
	subs      []*nats.Subscription
	transfers map[string]*transfer // key: agent/transferID
	aligned   alignedBuffers       // for direct writes (staging.go)
	stop      chan struct{}
	wg        sync.WaitGroup

	// signals tell tests what happened to transfers (testsignals.go);
	// off in production.
	signals receiverSignals
}

// NewReceiver validates cfg and returns a Receiver; Start begins serving.
func NewReceiver(cfg ReceiverConfig) (*Receiver, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Receiver{cfg: c, log: c.Logger.With().Str("component", "filetransfer.receiver").Logger()}
	r.aligned.size = c.ChunkSize
	return r, nil
}

// Start subscribes to the upload subjects and starts the janitor that closes
// idle transfers and removes stale staging files. ctx bounds only the start.
func (r *Receiver) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return errors.New("filetransfer: receiver already started")
	}
	if err := os.MkdirAll(r.cfg.StagingDir, 0o700); err != nil {
		return fmt.Errorf("filetransfer: create staging dir: %w", err)
	}
	r.transfers = map[string]*transfer{}
	r.stop = make(chan struct{})
	p := r.cfg.SubjectPrefix
	handlers := []struct {
		verb string
		fn   nats.MsgHandler
	}{
		{"open", r.handleOpen},
		{"chunk", r.handleChunk},
		{"commit", r.handleQueued},
		{"abort", r.handleQueued},
	}
	for _, h := range handlers {
		sub, err := r.cfg.Conn.Subscribe(p+".*."+h.verb, h.fn)
		if err != nil {
			r.unsubscribeLocked()
			return fmt.Errorf("filetransfer: subscribe %s.*.%s: %w", p, h.verb, err)
		}
		if h.verb == "chunk" {
			_ = sub.SetPendingLimits(-1, r.cfg.PendingBytes)
		}
		r.subs = append(r.subs, sub)
	}
	if err := flush(ctx, r.cfg.Conn); err != nil {
		r.unsubscribeLocked()
		return fmt.Errorf("filetransfer: flush subscriptions: %w", err)
	}
	r.started = true
	r.wg.Add(1)
	go r.janitor()
	r.log.Info().Str("prefix", p).Str("staging", r.cfg.StagingDir).Msg("file receiver started")
	return nil
}

// Stop unsubscribes, closes open transfers (their staged data stays for a
// resume after restart) and waits for the goroutines to end, or for ctx
// (then it returns ctx's error and they end on their own).
func (r *Receiver) Stop(ctx context.Context) error {
	r.mu.Lock()
	if !r.started {
		r.mu.Unlock()
		return nil
	}
	r.started = false
	r.unsubscribeLocked()
	close(r.stop)
	var all []*transfer
	for k, t := range r.transfers {
		all = append(all, t)
		delete(r.transfers, k)
	}
	r.mu.Unlock()
	for _, t := range all {
		t.close()
	}
	return stopWait(ctx, r.wg.Wait)
}

func (r *Receiver) unsubscribeLocked() {
	for _, s := range r.subs {
		_ = s.Unsubscribe()
	}
	r.subs = nil
}

func (r *Receiver) janitor() {
	defer r.wg.Done()
	tick := time.NewTicker(max(r.cfg.IdleTimeout/4, 10*time.Millisecond))
	defer tick.Stop()
	r.sweepStaging()
	lastSweep := time.Now()
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
		}
		now := time.Now()
		r.mu.Lock()
		var idle []*transfer
		for k, t := range r.transfers {
			if now.Sub(time.Unix(0, t.lastActive.Load())) > r.cfg.IdleTimeout && !t.committing.Load() {
				idle = append(idle, t)
				delete(r.transfers, k)
			}
		}
		r.mu.Unlock()
		for _, t := range idle {
			r.log.Debug().Str("agent", t.agent).Str("transfer", t.id).Msg("closing idle transfer")
			t.close()
		}
		if now.Sub(lastSweep) > time.Hour {
			r.sweepStaging()
			lastSweep = now
		}
	}
}

// sweepStaging deletes staging files untouched for StagingTTL.
func (r *Receiver) sweepStaging() {
	cutoff := time.Now().Add(-r.cfg.StagingTTL)
	_ = filepath.WalkDir(r.cfg.StagingDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.ModTime().Before(cutoff) {
			r.log.Info().Str("path", path).Msg("removing abandoned staging file")
			_ = os.Remove(path)
		}
		return nil
	})
}

func (r *Receiver) key(agent, id string) string { return agent + "/" + id }

func (r *Receiver) handleOpen(m *nats.Msg) {
	agent, ok := agentFromSubject(r.cfg.SubjectPrefix, m.Subject)
	if !ok {
		_ = respondJSON(m, OpenReply{Error: toWire(fmt.Errorf("%w: bad subject", ErrBadRequest))})
		return
	}
	var req OpenRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		_ = respondJSON(m, OpenReply{Error: toWire(fmt.Errorf("%w: %v", ErrBadRequest, err))})
		return
	}
	t, err := r.open(agent, req)
	if err != nil {
		r.log.Warn().Err(err).Str("agent", agent).Str("transfer", req.TransferID).Stringer("ref", req.Ref).Msg("open refused")
		_ = respondJSON(m, OpenReply{Error: toWire(err)})
		return
	}
	off := t.offset.Load()
	t.openedAt.Store(off)
	if off > 0 && !t.committed.Load() {
		r.log.Info().Str("agent", agent).Str("transfer", req.TransferID).Stringer("ref", req.Ref).
			Int64("offset", off).Int64("size", req.Size).Msg("upload resumes")
	}
	_ = respondJSON(m, OpenReply{Offset: off, ChunkSize: r.cfg.ChunkSize, Window: r.cfg.Window})
}

func (r *Receiver) open(agent string, req OpenRequest) (*transfer, error) {
	if !validID(req.TransferID) {
		return nil, fmt.Errorf("%w: transfer id %q", ErrBadRequest, req.TransferID)
	}
	ref, err := req.Ref.Validate()
	if err != nil {
		return nil, err
	}
	req.Ref = ref
	req.SHA256 = strings.ToLower(req.SHA256)
	if req.SHA256 != "" && !validSHA256(req.SHA256) {
		return nil, fmt.Errorf("%w: sha256 %q", ErrBadRequest, req.SHA256)
	}
	if req.Size < 0 || req.Size > r.cfg.MaxFileSize {
		return nil, fmt.Errorf("%w: size %d out of range", ErrBadRequest, req.Size)
	}
	if err := r.cfg.Authorize(agent, ref); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrForbidden, err)
	}
	// A transfer already under way was admitted when it began: a resume
	// must not be refused because of what was stored since. Admit runs
	// outside r.mu because a quota check may walk the participant's folders.
	if r.cfg.Admit != nil && !r.underWay(agent, req) {
		if err := r.cfg.Admit(agent, ref, req.Size); err != nil {
			return nil, err
		}
	}

	key := r.key(agent, req.TransferID)
	r.mu.Lock()
	if t, ok := r.transfers[key]; ok {
		if t.meta == req {
			t.touch()
			r.mu.Unlock()
			return t, nil
		}
		// Same id, different file: the sender's description wins. The
		// worker is stopped outside the lock (it may need the lock itself).
		delete(r.transfers, key)
		r.mu.Unlock()
		t.close()
		r.mu.Lock()
	}
	defer r.mu.Unlock()
	if !r.started {
		return nil, fmt.Errorf("%w: receiver stopping", ErrBusy)
	}
	if t, ok := r.transfers[key]; ok && t.meta == req {
		return t, nil // opened concurrently
	}
	if len(r.transfers) >= r.cfg.MaxTransfers {
		r.evictCommittedLocked()
	}
	if len(r.transfers) >= r.cfg.MaxTransfers {
		return nil, fmt.Errorf("%w: %d transfers open", ErrBusy, len(r.transfers))
	}
	t, err := loadTransfer(r, agent, req)
	if err != nil {
		return nil, err
	}
	r.transfers[key] = t
	r.wg.Add(1)
	go t.run()
	return t, nil
}

// underWay reports whether the transfer is open in memory or staged on disk
// for the same file.
func (r *Receiver) underWay(agent string, req OpenRequest) bool {
	r.mu.Lock()
	t, ok := r.transfers[r.key(agent, req.TransferID)]
	r.mu.Unlock()
	if ok && (t.meta == req || sameContent(t.meta, req) && !t.committed.Load()) {
		return true
	}
	var prev OpenRequest
	data, err := os.ReadFile(filepath.Join(r.cfg.StagingDir, agent, req.TransferID+".meta"))
	return err == nil && json.Unmarshal(data, &prev) == nil && sameContent(prev, req)
}

// sameContent reports whether two opens describe the same bytes. The name
// may differ: a job re-run after an agent restart saves the same output
// under ComfyUI's next counter ("…_00002_.mp4"), and what was staged for
// the first name is just as good for the second (the sha256 is checked at
// commit either way).
func sameContent(a, b OpenRequest) bool {
	return a.TransferID == b.TransferID && a.Size == b.Size && a.SHA256 == b.SHA256
}

// evictCommittedLocked drops transfers whose file is already stored. A
// sender that retries a commit after that reopens the transfer, sends the
// file again and gets the same stored file back (same content, same name),
// so eviction costs a retransmission at worst, never a wrong answer.
func (r *Receiver) evictCommittedLocked() {
	for k, t := range r.transfers {
		if t.committed.Load() {
			delete(r.transfers, k)
			go t.close() // the worker may need r.mu to finish
		}
	}
}

// enqueue hands m to the transfer's worker; r.mu guards against a
// concurrent close of the queue.
func (r *Receiver) enqueue(m *nats.Msg, agent, id string) (ok, busy bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, found := r.transfers[r.key(agent, id)]
	if !found {
		return false, false
	}
	t.touch()
	select {
	case t.queue <- m:
		return true, false
	default:
		return false, true
	}
}

func (r *Receiver) handleChunk(m *nats.Msg) {
	id := m.Header.Get(HeaderTransfer)
	gen, _ := strconv.ParseUint(m.Header.Get(HeaderGen), 10, 64)
	agent, ok := agentFromSubject(r.cfg.SubjectPrefix, m.Subject)
	if !ok || !validID(id) {
		_ = respondJSON(m, ChunkReply{Gen: gen, Error: toWire(fmt.Errorf("%w: bad chunk", ErrBadRequest))})
		return
	}
	queued, busy := r.enqueue(m, agent, id)
	switch {
	case queued:
	case busy:
		_ = respondJSON(m, ChunkReply{Gen: gen, Offset: -1, Error: toWire(ErrBusy)})
	default:
		_ = respondJSON(m, ChunkReply{Gen: gen, Offset: -1, Error: toWire(ErrUnknownTransfer)})
	}
}

// handleQueued routes commit and abort through the transfer's worker so they
// are ordered after the chunks before them.
func (r *Receiver) handleQueued(m *nats.Msg) {
	var req TransferRequest
	agent, ok := agentFromSubject(r.cfg.SubjectPrefix, m.Subject)
	if !ok || json.Unmarshal(m.Data, &req) != nil || !validID(req.TransferID) {
		_ = respondJSON(m, CommitReply{Error: toWire(fmt.Errorf("%w: bad request", ErrBadRequest))})
		return
	}
	queued, busy := r.enqueue(m, agent, req.TransferID)
	switch {
	case queued:
	case busy:
		_ = respondJSON(m, CommitReply{Error: toWire(ErrBusy)})
	case strings.HasSuffix(m.Subject, ".abort"):
		// Nothing in memory: drop whatever is staged.
		base := filepath.Join(r.cfg.StagingDir, agent, req.TransferID)
		for _, ext := range []string{".part", ".meta", ".hash"} {
			_ = os.Remove(base + ext)
		}
		_ = respondJSON(m, CommitReply{})
	default:
		_ = respondJSON(m, CommitReply{Error: toWire(ErrUnknownTransfer)})
	}
}
