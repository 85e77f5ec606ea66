package filetransfer

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
// resume after restart) and waits for the goroutines to end.
func (r *Receiver) Stop() {
	r.mu.Lock()
	if !r.started {
		r.mu.Unlock()
		return
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
	r.wg.Wait()
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

// transfer is one upload held open in memory. Its worker goroutine owns f,
// h and the staging files; other goroutines read only the atomics.
type transfer struct {
	r     *Receiver
	agent string
	id    string
	meta  OpenRequest
	base  string // staging path without extension

	offset     atomic.Int64
	lastActive atomic.Int64 // unix nanos
	// openedAt is the offset the last open answered: where the sender
	// resumed (logged at commit).
	openedAt atomic.Int64
	// committed is set once the file is in the store: the transfer then
	// only answers repeated commits and may be evicted to make room.
	committed atomic.Bool
	// committing is set while the file moves into the store.
	committing atomic.Bool

	f    *os.File
	h    *asyncHash
	done *CommitReply // set by the worker after a successful commit
	// direct is the staging file opened for direct I/O (nil where the
	// file system has none); flushed is the offset up to which writeback
	// of buffered writes was started. See staging.go.
	direct  *os.File
	flushed int64

	queue   chan *nats.Msg
	stopped chan struct{}
}

func (t *transfer) touch() { t.lastActive.Store(time.Now().UnixNano()) }

// close stops the worker (after the queued messages) and saves the hash
// state so a later open resumes without re-reading the staged data.
func (t *transfer) close() {
	close(t.queue)
	<-t.stopped
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
	t, err := r.load(agent, req)
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

// load opens the staging file of a transfer, resuming from what is there if
// it was staged for the same file, and starting fresh otherwise.
func (r *Receiver) load(agent string, req OpenRequest) (*transfer, error) {
	dir := filepath.Join(r.cfg.StagingDir, agent)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("staging dir: %w", err)
	}
	t := &transfer{
		r: r, agent: agent, id: req.TransferID, meta: req,
		base: filepath.Join(dir, req.TransferID),
		// Two chunks queued for hashing are enough to overlap it with the
		// writes; more would only hold memory.
		h:       newAsyncHash(sha256.New(), 2),
		queue:   make(chan *nats.Msg, r.cfg.Window+2),
		stopped: make(chan struct{}),
	}
	t.touch()

	var prev OpenRequest
	if data, err := os.ReadFile(t.base + ".meta"); err == nil && json.Unmarshal(data, &prev) == nil && sameContent(prev, req) {
		f, err := os.OpenFile(t.base+".part", os.O_RDWR, 0o600)
		if err == nil {
			off, err := t.resume(f)
			if err == nil && prev != req {
				// Same bytes under another name: the staged part carries
				// over, the new name is where it will be stored.
				meta, _ := json.Marshal(req)
				err = writeFileSync(t.base+".meta", meta)
			}
			if err == nil {
				t.useFile(f)
				t.offset.Store(off)
				r.log.Info().Str("agent", agent).Str("transfer", req.TransferID).Int64("offset", off).Msg("resuming transfer")
				return t, nil
			}
			f.Close()
			r.log.Warn().Err(err).Str("agent", agent).Str("transfer", req.TransferID).Msg("cannot resume; starting over")
		}
	}

	meta, _ := json.Marshal(req)
	if err := writeFileSync(t.base+".meta", meta); err != nil {
		return nil, fmt.Errorf("staging meta: %w", err)
	}
	_ = os.Remove(t.base + ".hash")
	f, err := os.OpenFile(t.base+".part", os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("staging file: %w", err)
	}
	if err := preallocate(f, req.Size); err != nil {
		f.Close()
		_ = os.Remove(t.base + ".part")
		_ = os.Remove(t.base + ".meta")
		// ENOSPC: no room for the file; the sender retries later.
		return nil, fmt.Errorf("%w: staging space for %d bytes: %v", ErrBusy, req.Size, err)
	}
	t.useFile(f)
	return t, nil
}

// resume restores the hash state for the staged prefix: from the .hash file
// saved when the transfer was closed cleanly, or by re-reading the data.
func (t *transfer) resume(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := min(fi.Size(), t.meta.Size)
	if data, err := os.ReadFile(t.base + ".hash"); err == nil && len(data) > 8 {
		if off := int64(binary.BigEndian.Uint64(data)); off == size {
			if err := t.h.h.(encoding.BinaryUnmarshaler).UnmarshalBinary(data[8:]); err == nil {
				return off, f.Truncate(off)
			}
		}
		t.h.h.Reset()
	}
	n, err := io.Copy(t.h.h, io.NewSectionReader(f, 0, size))
	if err != nil {
		return 0, err
	}
	return n, f.Truncate(n)
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
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

// run is the transfer's worker.
func (t *transfer) run() {
	defer t.r.wg.Done()
	defer close(t.stopped)
	t.h.start()
	for m := range t.queue {
		switch {
		case strings.HasSuffix(m.Subject, ".chunk"):
			t.chunk(m)
		case strings.HasSuffix(m.Subject, ".commit"):
			t.commit(m)
		case strings.HasSuffix(m.Subject, ".abort"):
			t.abort(m)
		}
	}
	if t.f != nil {
		t.saveHashState()
		t.closeFiles()
	}
	t.h.stop()
}

func (t *transfer) saveHashState() {
	t.h.wait()
	state, err := t.h.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return
	}
	buf := binary.BigEndian.AppendUint64(nil, uint64(t.offset.Load()))
	_ = writeFileSync(t.base+".hash", append(buf, state...))
}

func (t *transfer) chunk(m *nats.Msg) {
	gen, _ := strconv.ParseUint(m.Header.Get(HeaderGen), 10, 64)
	reply := func(err error) {
		_ = respondJSON(m, ChunkReply{Offset: t.offset.Load(), Gen: gen, Error: toWire(err)})
	}
	if t.done != nil || t.f == nil {
		reply(nil)
		return
	}
	off, err := strconv.ParseInt(m.Header.Get(HeaderOffset), 10, 64)
	if err != nil {
		reply(fmt.Errorf("%w: offset header", ErrBadRequest))
		return
	}
	cur := t.offset.Load()
	switch {
	case off < cur:
		// A resend of data we already have (after a go-back): acknowledge.
		reply(nil)
		return
	case off > cur:
		reply(fmt.Errorf("%w: got %d, want %d", ErrOffsetMismatch, off, cur))
		return
	}
	if len(m.Data) > t.r.cfg.ChunkSize || off+int64(len(m.Data)) > t.meta.Size {
		reply(fmt.Errorf("%w: chunk of %d bytes at %d exceeds limits", ErrBadRequest, len(m.Data), off))
		return
	}
	want, err := strconv.ParseUint(m.Header.Get(HeaderCRC32C), 16, 32)
	if err != nil || uint32(want) != crc32c(m.Data) {
		t.r.log.Warn().Str("agent", t.agent).Str("transfer", t.id).Int64("offset", off).Msg("chunk checksum mismatch; asking for a resend")
		reply(fmt.Errorf("%w at offset %d", ErrChunkChecksum, off))
		return
	}
	if err := t.writeAt(m.Data, off); err != nil {
		t.r.log.Error().Err(err).Str("agent", t.agent).Str("transfer", t.id).Msg("staging write failed")
		reply(fmt.Errorf("staging write: %w", err))
		return
	}
	// Hashing runs beside the next chunk's write: the acknowledgement only
	// needs the data on disk, the sha256 is needed at commit.
	t.h.write(m.Data)
	t.offset.Store(off + int64(len(m.Data)))
	reply(nil)
}

func (t *transfer) commit(m *nats.Msg) {
	if t.done != nil {
		_ = respondJSON(m, *t.done)
		return
	}
	log := t.r.log.With().Str("agent", t.agent).Str("transfer", t.id).Stringer("ref", t.meta.Ref).Logger()
	fail := func(err error) {
		log.Warn().Err(err).Msg("commit failed")
		_ = respondJSON(m, CommitReply{Error: toWire(err)})
	}
	if off := t.offset.Load(); off != t.meta.Size {
		fail(fmt.Errorf("%w: have %d of %d bytes", ErrOffsetMismatch, off, t.meta.Size))
		return
	}
	// The sum comes with the open, or (from a sender that hashed while
	// sending) with the commit.
	var req TransferRequest
	_ = json.Unmarshal(m.Data, &req)
	want := t.meta.SHA256
	if got := strings.ToLower(req.SHA256); got != "" {
		if want != "" && got != want || !validSHA256(got) {
			fail(fmt.Errorf("%w: commit sha256 %q for a transfer opened with %q", ErrBadRequest, req.SHA256, want))
			return
		}
		want = got
	}
	if want == "" {
		fail(fmt.Errorf("%w: no sha256 at open or commit", ErrBadRequest))
		return
	}
	t.h.wait()
	sum := hex.EncodeToString(t.h.h.Sum(nil))
	if sum != want {
		// The staged data is wrong (or the sender's sum is): start over.
		_ = t.f.Truncate(0)
		t.h.h.Reset()
		t.offset.Store(0)
		_ = os.Remove(t.base + ".hash")
		fail(fmt.Errorf("%w: sha256 %s, want %s", filestore.ErrChecksumMismatch, sum, want))
		return
	}
	if err := t.f.Sync(); err != nil {
		fail(fmt.Errorf("sync staging: %w", err))
		return
	}
	// The store may copy the file (S3): allow for its size, as the sender
	// does while it waits for this reply. The janitor leaves a committing
	// transfer alone however long that takes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute+CommitTime(t.meta.Size))
	defer cancel()
	t.committing.Store(true)
	info, reused, err := t.store(ctx, sum)
	t.touch()
	t.committing.Store(false)
	if err != nil {
		fail(err)
		return
	}
	t.closeFiles()
	for _, ext := range []string{".part", ".meta", ".hash"} {
		_ = os.Remove(t.base + ext)
	}
	t.done = &CommitReply{Ref: info.Ref, Size: info.Size, SHA256: sum}
	t.committed.Store(true)
	if t.r.cfg.Stored != nil && !reused {
		t.r.cfg.Stored(t.agent, info)
	}
	log.Info().Stringer("stored", info.Ref).Int64("size", info.Size).Int64("resumed_from", t.openedAt.Load()).Msg("file received")
	_ = respondJSON(m, *t.done)
}

// store moves the staged file into the Store under ComfyUI's naming rule:
// the requested name, or the same name with " (n)" when another file with
// different content has it; a file with the same content is reused
// (reused reports it: no new bytes on mello's disk).
func (t *transfer) store(ctx context.Context, sum string) (_ filestore.Info, reused bool, _ error) {
	st := t.r.cfg.Store
	for range 5 {
		name, exists, err := filestore.UniqueName(ctx, st, t.meta.Ref, sum)
		if err != nil {
			return filestore.Info{}, false, err
		}
		ref := t.meta.Ref
		ref.Name = name
		if err := t.r.cfg.Authorize(t.agent, ref); err != nil {
			return filestore.Info{}, false, fmt.Errorf("%w: %w", ErrForbidden, err)
		}
		if exists {
			info, err := st.Stat(ctx, ref)
			return info, true, err
		}
		var info filestore.Info
		if imp, ok := st.(filestore.Importer); ok {
			info, err = imp.Import(ctx, ref, t.base+".part", sum, filestore.ExpectSize(t.meta.Size))
		} else {
			info, err = copyInto(ctx, st, ref, t.f, t.meta.Size, sum)
		}
		if errors.Is(err, filestore.ErrExists) {
			continue // lost a race for the name: look again
		}
		return info, false, err
	}
	return filestore.Info{}, false, fmt.Errorf("%w: could not find a free name for %s", filestore.ErrExists, t.meta.Ref)
}

func copyInto(ctx context.Context, st filestore.Store, ref filestore.Ref, f *os.File, size int64, sum string) (filestore.Info, error) {
	w, err := st.Create(ctx, ref, filestore.ExpectSize(size))
	if err != nil {
		return filestore.Info{}, err
	}
	defer w.Abort()
	if _, err := io.Copy(w, io.NewSectionReader(f, 0, size)); err != nil {
		return filestore.Info{}, fmt.Errorf("copy into store: %w", err)
	}
	return w.Commit(ctx, sum)
}

func (t *transfer) abort(m *nats.Msg) {
	t.closeFiles()
	for _, ext := range []string{".part", ".meta", ".hash"} {
		_ = os.Remove(t.base + ext)
	}
	t.offset.Store(0)
	t.r.mu.Lock()
	if cur, ok := t.r.transfers[t.r.key(t.agent, t.id)]; ok && cur == t {
		delete(t.r.transfers, t.r.key(t.agent, t.id))
		// The queue is closed by nobody else now; close it so run ends.
		close(t.queue)
	}
	t.r.mu.Unlock()
	_ = respondJSON(m, CommitReply{})
}
