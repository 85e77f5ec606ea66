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
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// transfer is one upload held open in memory: the state machine of a single
// file, apart from the Receiver that holds the set of them (receiver.go).
//
// Its states: receiving (chunks append at offset, hashed on the side), then
// on commit either committed (the file is in the store; repeated commits get
// the same answer) or back to receiving from 0 (sha256 mismatch); abort drops
// the staged data and the transfer. Closing it (Stop, idle, eviction) saves
// the hash state so a later open resumes where it was.
//
// Its worker goroutine (run) owns f, h and the staging files; other
// goroutines read only the atomics.
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

// loadTransfer opens the staging file of a transfer, resuming from what is there if
// it was staged for the same file, and starting fresh otherwise.
func loadTransfer(r *Receiver, agent string, req OpenRequest) (*transfer, error) {
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
			off, fromState, err := t.resume(f)
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
				r.signals.Resumed.Signal(resumeSignal{transferSignal: t.signalOf(), FromHashState: fromState})
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
func (t *transfer) resume(f *os.File) (_ int64, fromState bool, _ error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	size := min(fi.Size(), t.meta.Size)
	if data, err := os.ReadFile(t.base + ".hash"); err == nil && len(data) > 8 {
		if off := int64(binary.BigEndian.Uint64(data)); off == size {
			if err := t.h.h.(encoding.BinaryUnmarshaler).UnmarshalBinary(data[8:]); err == nil {
				return off, true, f.Truncate(off)
			}
		}
		t.h.h.Reset()
	}
	n, err := io.Copy(t.h.h, io.NewSectionReader(f, 0, size))
	if err != nil {
		return 0, false, err
	}
	return n, false, f.Truncate(n)
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
	t.r.signals.Closed.Signal(t.signalOf())
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
	t.r.signals.ChunkReceived.Signal(t.signalOf())
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
		t.r.signals.ChecksumMismatch.Signal(t.signalOf())
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
	t.r.signals.Committed.Signal(t.signalOf())
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
	t.r.signals.Aborted.Signal(t.signalOf())
	_ = respondJSON(m, CommitReply{})
}
