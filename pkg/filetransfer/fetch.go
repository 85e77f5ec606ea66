package filetransfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// Fetch downloads ref from the Server listening under subjectPrefix, as
// agentID, writing it to w from offset 0, and verifies its sha256 against
// expectedSHA256 (or, when that is "", against the server's). Up to the
// window's worth of chunk requests are in flight; each is retried on its own
// after a timeout or a checksum error. Data is written in order, so memory
// holds at most a window of chunks.
func Fetch(ctx context.Context, nc *nats.Conn, subjectPrefix, agentID string, ref filestore.Ref, w io.WriterAt, expectedSHA256 string, opts ...Option) (filestore.Info, error) {
	f, err := newFetcher(nc, subjectPrefix, agentID, ref, opts)
	if err != nil {
		return filestore.Info{}, err
	}
	info, err := f.stat(ctx, expectedSHA256)
	if err != nil {
		return filestore.Info{}, err
	}
	h := sha256.New()
	if err := f.fetch(ctx, info, 0, h, w); err != nil {
		return filestore.Info{}, err
	}
	return info, f.verify(info, h, expectedSHA256)
}

// FetchFile downloads ref to destPath. The data goes to a ".part" file next
// to it, named after expectedSHA256 so that a later call for the same content
// resumes where an interrupted one stopped; the part file is renamed to
// destPath once the sha256 matches.
func FetchFile(ctx context.Context, nc *nats.Conn, subjectPrefix, agentID string, ref filestore.Ref, destPath, expectedSHA256 string, opts ...Option) (filestore.Info, error) {
	f, err := newFetcher(nc, subjectPrefix, agentID, ref, opts)
	if err != nil {
		return filestore.Info{}, err
	}
	info, err := f.stat(ctx, expectedSHA256)
	if err != nil {
		return filestore.Info{}, err
	}
	if err := os.MkdirAll(filepath.Dir(destPath), 0o750); err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", ref, err)
	}
	want := strings.ToLower(expectedSHA256)
	if want == "" {
		want = info.SHA256
	}
	part := destPath + ".part"
	if len(want) >= 16 {
		part = destPath + "." + want[:16] + ".part"
	}
	out, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", ref, err)
	}
	defer out.Close()

	// Resume: hash what an earlier call left behind.
	h := sha256.New()
	start, err := io.Copy(h, io.NewSectionReader(out, 0, info.Size))
	if err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: read part file: %w", ref, err)
	}
	if err := out.Truncate(start); err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", ref, err)
	}
	f.stats.StartOffset = start
	if err := f.fetch(ctx, info, start, h, out); err != nil {
		return filestore.Info{}, err
	}
	if err := f.verify(info, h, expectedSHA256); err != nil {
		_ = os.Remove(part)
		return filestore.Info{}, err
	}
	if err := out.Sync(); err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", ref, err)
	}
	if err := os.Rename(part, destPath); err != nil {
		return filestore.Info{}, fmt.Errorf("filetransfer: fetch %s: %w", ref, err)
	}
	return info, nil
}

type fetcher struct {
	nc    *nats.Conn
	o     options
	ref   filestore.Ref
	subj  string
	stats *Stats
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
	return f, nil
}

func (f *fetcher) stat(ctx context.Context, expected string) (filestore.Info, error) {
	data, _ := json.Marshal(StatRequest{Ref: f.ref})
	var lastErr error
	for attempt := 0; attempt <= f.o.maxRetries; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, f.o.backoff(attempt)); err != nil {
				return filestore.Info{}, err
			}
		}
		rctx, cancel := context.WithTimeout(ctx, f.o.requestTimeout)
		m, err := f.nc.RequestWithContext(rctx, f.subj+"stat", data)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return filestore.Info{}, ctx.Err()
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

type chunkResult struct {
	off     int64
	data    []byte
	resends int64
	err     error
}

// fetch downloads [start, info.Size) into w, feeding h in order.
func (f *fetcher) fetch(ctx context.Context, info filestore.Info, start int64, h hash.Hash, w io.WriterAt) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	window := windowFor(f.o.window, f.o.chunkSize)
	pending := make([]chan chunkResult, 0, window)
	next := start
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
		f.stats.Resends += res.resends
		if res.err != nil {
			return fmt.Errorf("filetransfer: fetch %s: %w", f.ref, res.err)
		}
		if _, err := w.WriteAt(res.data, res.off); err != nil {
			return fmt.Errorf("filetransfer: fetch %s: write: %w", f.ref, err)
		}
		h.Write(res.data)
		f.stats.BytesSent += int64(len(res.data))
		if f.o.progress != nil {
			f.o.progress(res.off+int64(len(res.data)), info.Size)
		}
		if next < info.Size {
			launch()
		}
	}
	return nil
}

func (f *fetcher) getChunk(ctx context.Context, off int64, n int) chunkResult {
	data, _ := json.Marshal(ChunkRequest{Ref: f.ref, Offset: off, Length: n})
	var lastErr error
	var resends int64
	for attempt := 0; attempt <= f.o.maxRetries; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, f.o.backoff(attempt)); err != nil {
				return chunkResult{err: err}
			}
		}
		rctx, cancel := context.WithTimeout(ctx, f.o.requestTimeout)
		m, err := f.nc.RequestWithContext(rctx, f.subj+"chunk", data)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return chunkResult{err: ctx.Err()}
			}
			if errors.Is(err, context.DeadlineExceeded) {
				err = ErrTimeout
			}
			if lastErr = err; retryable(err) {
				continue
			}
			return chunkResult{err: err}
		}
		if e := m.Header.Get(HeaderError); e != "" {
			var we WireError
			_ = json.Unmarshal([]byte(e), &we)
			err := we.err()
			if lastErr = err; retryable(err) {
				continue
			}
			return chunkResult{err: err}
		}
		if f.o.testCorrupt != nil {
			f.o.testCorrupt(off, m.Data)
		}
		crc, cerr := strconv.ParseUint(m.Header.Get(HeaderCRC32C), 16, 32)
		if cerr != nil || uint32(crc) != crc32c(m.Data) || m.Header.Get(HeaderOffset) != strconv.FormatInt(off, 10) {
			lastErr = fmt.Errorf("%w at offset %d", ErrChunkChecksum, off)
			resends++
			continue
		}
		if len(m.Data) != n {
			// The file is shorter than it was at stat time: it changed.
			return chunkResult{err: fmt.Errorf("%w: short chunk at %d (%d of %d bytes): file changed", filestore.ErrChecksumMismatch, off, len(m.Data), n)}
		}
		return chunkResult{off: off, data: m.Data, resends: resends}
	}
	return chunkResult{err: fmt.Errorf("chunk at %d: giving up: %w", off, lastErr)}
}

func (f *fetcher) verify(info filestore.Info, h hash.Hash, expected string) error {
	want := expected
	if want == "" {
		want = info.SHA256
	}
	sum := hex.EncodeToString(h.Sum(nil))
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
