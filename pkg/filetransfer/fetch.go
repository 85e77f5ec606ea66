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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// Fetch downloads ref from the Server listening under subjectPrefix, as
// agentID, writing it to w from offset 0, and verifies its sha256 against
// expectedSHA256 (or, when that is "", against the server's). Up to the
// window's worth of chunk requests are in flight; each is retried on its own
// after a timeout or a checksum error. Data is written in order, so memory
// holds at most a window of chunks.
//
// When the connection drops in the middle (a network blip, the broker's
// server restarting), Fetch stops asking, waits for the client to reconnect
// (up to WithReconnectTimeout) and goes on from the last byte it wrote: what
// was in flight, one window at most, is fetched again. Only a connection
// closed by its owner ends it.
func Fetch(ctx context.Context, nc *nats.Conn, subjectPrefix, agentID string, ref filestore.Ref, w io.WriterAt, expectedSHA256 string, opts ...Option) (filestore.Info, error) {
	f, err := newFetcher(nc, subjectPrefix, agentID, ref, opts)
	if err != nil {
		return filestore.Info{}, err
	}
	defer f.link.close()
	info, err := f.stat(ctx, expectedSHA256)
	if err != nil {
		return filestore.Info{}, err
	}
	h := newAsyncHash(sha256.New(), 2)
	h.start()
	defer h.stop()
	if _, err := f.fetch(ctx, info, 0, h, w); err != nil {
		return filestore.Info{}, err
	}
	h.wait()
	return info, f.verify(info, h, expectedSHA256)
}

// FetchFile downloads ref to destPath. The data goes to a ".part" file next
// to it, named after expectedSHA256 so that a later call for the same content
// resumes where an interrupted one stopped; the part file is renamed to
// destPath once the sha256 matches.
//
// A call that fails (the connection stayed away, ctx ended) syncs the part
// file and saves the sha256 state of its bytes beside it (a
// ".sha256state.part" file), so the next call resumes without reading the
// part again; without that file (the process was killed) it hashes the
// part once.
func FetchFile(ctx context.Context, nc *nats.Conn, subjectPrefix, agentID string, ref filestore.Ref, destPath, expectedSHA256 string, opts ...Option) (filestore.Info, error) {
	f, err := newFetcher(nc, subjectPrefix, agentID, ref, opts)
	if err != nil {
		return filestore.Info{}, err
	}
	defer f.link.close()
	info, err := f.stat(ctx, expectedSHA256)
	if err != nil {
		return filestore.Info{}, err
	}
	if err := os.MkdirAll(filepath.Dir(destPath), 0o750); err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", ref, err)
	}
	part, state := partPaths(destPath, expectedSHA256, info.SHA256)
	out, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", ref, err)
	}
	defer out.Close()

	h := newAsyncHash(sha256.New(), 2)
	start, err := resumePart(out, state, info.Size, h)
	if err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: read part file: %w", ref, err)
	}
	f.stats.StartOffset = start
	if start > 0 {
		f.log.Debug().Int64("offset", start).Msg("resuming download from the part file")
	}
	h.start()
	defer h.stop()
	written, err := f.fetch(ctx, info, start, h, out)
	if err != nil {
		// What was written is good: keep it, and the hash of it, for the
		// next call.
		h.wait()
		if serr := out.Sync(); serr == nil && written > start {
			saveHashState(state, written, h)
		}
		return filestore.Info{}, err
	}
	h.wait()
	if err := f.verify(info, h, expectedSHA256); err != nil {
		_ = os.Remove(part)
		_ = os.Remove(state)
		return filestore.Info{}, err
	}
	if err := out.Sync(); err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", ref, err)
	}
	if err := os.Rename(part, destPath); err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", ref, err)
	}
	_ = os.Remove(state)
	return info, nil
}

// partPaths names the part file of a download to destPath and the file
// holding the sha256 state of its bytes. Both end in ".part" (the agent's
// input cache counts and evicts such files as unfinished fetches).
func partPaths(destPath, expected, serverSHA string) (part, state string) {
	want := strings.ToLower(expected)
	if want == "" {
		want = strings.ToLower(serverSHA)
	}
	base := destPath
	if len(want) >= 16 {
		base = destPath + "." + want[:16]
	}
	return base + ".part", base + ".sha256state.part"
}

// resumePart finds how much of the part file an earlier call left and puts
// the sha256 state of those bytes into h (before h starts): from the saved
// state when it matches the file, else by reading the file. The part is
// truncated to what counts.
func resumePart(part *os.File, statePath string, size int64, h *asyncHash) (int64, error) {
	fi, err := part.Stat()
	if err != nil {
		return 0, err
	}
	have := min(fi.Size(), size)
	if data, err := os.ReadFile(statePath); err == nil && len(data) > 8 {
		// A state for more bytes than the part holds is not for this part
		// (it was evicted or damaged since): hash the part instead.
		if off := int64(binary.BigEndian.Uint64(data)); off > 0 && off <= have {
			if err := h.h.(encoding.BinaryUnmarshaler).UnmarshalBinary(data[8:]); err == nil {
				return off, part.Truncate(off)
			}
		}
		h.h.Reset()
	}
	_ = os.Remove(statePath)
	n, err := io.Copy(h.h, io.NewSectionReader(part, 0, have))
	if err != nil {
		return 0, err
	}
	return n, part.Truncate(n)
}

// saveHashState writes the sha256 state of the first off bytes (best
// effort: without it the next call hashes the part again).
func saveHashState(path string, off int64, h *asyncHash) {
	state, err := h.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return
	}
	buf := binary.BigEndian.AppendUint64(nil, uint64(off))
	_ = writeFileSync(path, append(buf, state...))
}

type fetcher struct {
	nc    *nats.Conn
	o     options
	ref   filestore.Ref
	subj  string
	stats *Stats
	log   zerolog.Logger
	link  *link
}

func newFetcher(nc *nats.Conn, prefix, agentID string, ref filestore.Ref, opts []Option) (*fetcher, error) {
	o := newOptions(opts)
	if err := ValidAgentID(agentID); err != nil {
		return nil, err
	}
	ref, err := ref.Validate()
	if err != nil {
		return nil, fmt.Errorf("filetransfer: fetch: %w", err)
	}
	f := &fetcher{nc: nc, o: o, ref: ref, subj: prefix + "." + agentID + ".", stats: o.stats}
	if f.stats == nil {
		f.stats = &Stats{}
	}
	f.log = o.logger.With().Str("fetch", ref.String()).Logger()
	f.link = newLink(nc, o.reconnectTimeout)
	return f, nil
}

func (f *fetcher) stat(ctx context.Context, expected string) (filestore.Info, error) {
	data, _ := json.Marshal(StatRequest{Ref: f.ref})
	var lastErr error
	reconnects := 0
	awaitLink := func() error {
		if reconnects++; reconnects > f.o.maxRetries {
			return fmt.Errorf("filetransfer: fetch %s: stat: connection lost %d times: %w", f.ref, reconnects, errDisconnected)
		}
		if err := f.link.await(ctx); err != nil {
			return fmt.Errorf("filetransfer: fetch %s: stat: %w", f.ref, err)
		}
		return nil
	}
	for attempt := 0; attempt <= f.o.maxRetries; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, f.o.backoff(attempt)); err != nil {
				return filestore.Info{}, err
			}
		}
		if f.link.down() {
			if err := awaitLink(); err != nil {
				return filestore.Info{}, err
			}
		}
		rctx, cancel := context.WithTimeout(ctx, f.o.requestTimeout)
		stop, _ := f.link.cancelOnDrop(cancel)
		m, err := f.nc.RequestWithContext(rctx, f.subj+"stat", data)
		stop()
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return filestore.Info{}, ctx.Err()
			}
			if f.link.down() {
				// Not the server's failure: wait for the connection and ask
				// again, without counting it as an attempt.
				if err := awaitLink(); err != nil {
					return filestore.Info{}, err
				}
				attempt--
				continue
			}
			if errors.Is(err, context.DeadlineExceeded) {
				err = ErrTimeout
			}
			if lastErr = err; retryable(err) {
				continue
			}
			return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: stat: %w", f.ref, err)
		}
		var rep StatReply
		if err := json.Unmarshal(m.Data, &rep); err != nil {
			return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: stat: %w: %v", f.ref, ErrBadRequest, err)
		}
		if err := rep.Error.err(); err != nil {
			if lastErr = err; retryable(err) {
				continue
			}
			return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", f.ref, err)
		}
		if expected != "" && rep.Info.SHA256 != "" && !strings.EqualFold(expected, rep.Info.SHA256) {
			return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w: server has sha256 %s, want %s", f.ref, filestore.ErrChecksumMismatch, rep.Info.SHA256, expected)
		}
		if rep.ChunkSize > 0 {
			f.o.chunkSize = min(f.o.chunkSize, rep.ChunkSize)
		}
		f.o.chunkSize = max(1, min(f.o.chunkSize, maxChunkFor(f.nc)))
		return rep.Info, nil
	}
	return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: stat: giving up: %w", f.ref, lastErr)
}

// chunkResult is the outcome of one chunk request and its retries.
type chunkResult struct {
	off  int64
	data []byte
	// received counts the payload bytes that arrived (corrupted ones
	// included); resends the chunks asked for again after a checksum error;
	// retries the requests repeated for any reason.
	received, resends int64
	retries           int
	err               error
}

// fetch downloads [start, info.Size) into w, feeding h in order, through
// any number of dropped and re-established connections. It returns the
// offset up to which w holds the file.
func (f *fetcher) fetch(ctx context.Context, info filestore.Info, start int64, h *asyncHash, w io.WriterAt) (int64, error) {
	written := start
	reconnects := 0 // in a row, without progress
	for {
		f.stats.StartOffset = written
		n, err := f.stream(ctx, info, written, h, w)
		if n > written {
			reconnects = 0
		}
		written = n
		if err == nil {
			return written, nil
		}
		if ctx.Err() != nil {
			return written, ctx.Err()
		}
		if !f.link.lost(err) {
			return written, fmt.Errorf("filetransfer: fetch %s: %w", f.ref, err)
		}
		// Not a failure of the download: wait for the client to reconnect
		// (that wait is the backoff) and go on from what was written.
		if reconnects++; reconnects > f.o.maxRetries {
			return written, fmt.Errorf("filetransfer: fetch %s: connection lost %d times without progress: %w", f.ref, reconnects, err)
		}
		f.log.Info().Err(err).Int64("offset", written).Msg("connection lost during download; waiting for NATS to reconnect")
		if werr := f.link.await(ctx); werr != nil {
			return written, fmt.Errorf("filetransfer: fetch %s: %w (after: %v)", f.ref, werr, err)
		}
		f.stats.Reconnects++
	}
}

// stream asks for the chunks from start on, a window of them in flight,
// and writes them in order until the end of the file, an error, or the
// connection dropping (which cancels the requests in flight at once: their
// replies are lost with it). It returns the offset up to which w holds the
// file.
func (f *fetcher) stream(ctx context.Context, info filestore.Info, start int64, h *asyncHash, w io.WriterAt) (int64, error) {
	if start >= info.Size {
		return start, nil
	}
	if f.link.down() {
		return start, errDisconnected
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopWatch, dropped := f.link.cancelOnDrop(cancel)
	defer stopWatch()

	window := windowFor(f.o.window, f.o.chunkSize)
	pending := make([]chan chunkResult, 0, window)
	account := func(res chunkResult) {
		f.stats.BytesSent += res.received
		f.stats.Resends += res.resends
		f.stats.Attempts += res.retries
	}
	// Requests still in flight are cancelled and waited for (their
	// goroutines end, and what they received is counted).
	defer func() {
		cancel()
		for _, ch := range pending {
			account(<-ch)
		}
	}()
	next, written := start, start
	launch := func() {
		off, n := next, int(min(int64(f.o.chunkSize), info.Size-next))
		ch := make(chan chunkResult, 1)
		go func() { ch <- f.getChunk(ctx, off, n) }()
		pending = append(pending, ch)
		next += int64(n)
	}
	for len(pending) < window && next < info.Size {
		launch()
	}
	for len(pending) > 0 {
		res := <-pending[0]
		pending = pending[1:]
		account(res)
		if res.err != nil {
			switch {
			case parent.Err() != nil:
				return written, parent.Err()
			case dropped() || f.link.down():
				return written, fmt.Errorf("%w: %v", errDisconnected, res.err)
			}
			return written, res.err
		}
		if _, err := w.WriteAt(res.data, res.off); err != nil {
			return written, fmt.Errorf("write: %w", err)
		}
		// Hashing runs beside the next chunks' writes (the data is not
		// modified: every NATS message has its own buffer).
		h.write(res.data)
		written = res.off + int64(len(res.data))
		if f.o.progress != nil {
			f.o.progress(written, info.Size)
		}
		if next < info.Size {
			launch()
		}
	}
	return written, nil
}

func (f *fetcher) getChunk(ctx context.Context, off int64, n int) (res chunkResult) {
	data, _ := json.Marshal(ChunkRequest{Ref: f.ref, Offset: off, Length: n})
	var lastErr error
	for attempt := 0; attempt <= f.o.maxRetries; attempt++ {
		if attempt > 0 {
			res.retries++
			if err := sleep(ctx, f.o.backoff(attempt)); err != nil {
				res.err = err
				return res
			}
		}
		if f.link.down() {
			// Asking now would only fill the reconnect buffer.
			res.err = errDisconnected
			return res
		}
		rctx, cancel := context.WithTimeout(ctx, f.o.requestTimeout)
		m, err := f.nc.RequestWithContext(rctx, f.subj+"chunk", data)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				res.err = ctx.Err()
				return res
			}
			if f.link.down() {
				res.err = fmt.Errorf("%w: %v", errDisconnected, err)
				return res
			}
			if errors.Is(err, context.DeadlineExceeded) {
				err = ErrTimeout
			}
			if lastErr = err; retryable(err) {
				continue
			}
			res.err = err
			return res
		}
		if e := m.Header.Get(HeaderError); e != "" {
			var we WireError
			_ = json.Unmarshal([]byte(e), &we)
			err := we.err()
			if lastErr = err; retryable(err) {
				continue
			}
			res.err = err
			return res
		}
		res.received += int64(len(m.Data))
		if f.o.testCorrupt != nil {
			f.o.testCorrupt(off, m.Data)
		}
		crc, cerr := strconv.ParseUint(m.Header.Get(HeaderCRC32C), 16, 32)
		if cerr != nil || uint32(crc) != crc32c(m.Data) || m.Header.Get(HeaderOffset) != strconv.FormatInt(off, 10) {
			lastErr = fmt.Errorf("%w at offset %d", ErrChunkChecksum, off)
			res.resends++
			continue
		}
		if len(m.Data) != n {
			// The file is shorter than it was at stat time: it changed.
			res.err = fmt.Errorf("%w: short chunk at %d (%d of %d bytes): file changed", filestore.ErrChecksumMismatch, off, len(m.Data), n)
			return res
		}
		res.off, res.data = off, m.Data
		return res
	}
	res.err = fmt.Errorf("chunk at %d: giving up: %w", off, lastErr)
	return res
}

func (f *fetcher) verify(info filestore.Info, h *asyncHash, expected string) error {
	want := expected
	if want == "" {
		want = info.SHA256
	}
	sum := hex.EncodeToString(h.h.Sum(nil))
	if want != "" && !strings.EqualFold(sum, want) {
		return fmt.Errorf("filetransfer: fetch %s: %w: got %s, want %s", f.ref, filestore.ErrChecksumMismatch, sum, want)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
