package filetransfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// Send uploads meta.Size bytes read from r to the Receiver listening under
// subjectPrefix, as agentID, and returns where the file was stored.
//
// It resumes from the offset the receiver already has for meta.TransferID
// (after a dropped connection, a broker restart or an agent restart), keeps
// a window of chunks in flight, goes back to the receiver's offset when a
// chunk was lost or corrupted, and retries timeouts, "no responders" and
// busy answers with backoff. When the connection drops in the middle (the
// server restarts, a network blip), Send stops publishing, waits for the
// client to reconnect (up to WithReconnectTimeout) and resumes from what the
// receiver has; only a connection closed by its owner ends it. Memory use is
// one chunk plus what the NATS client buffers for the window, whatever the
// file size.
//
// With meta.SHA256 "" the sha256 is computed from the chunks as they are
// read for sending (on a goroutine of its own, three more chunk buffers)
// and given to the receiver at commit, which checks it against its own:
// the file is read once, and the first chunk leaves at once instead of
// after a hashing pass over the whole file. WithStats reports the sum.
func Send(ctx context.Context, nc *nats.Conn, subjectPrefix, agentID string, meta Meta, r io.ReaderAt, opts ...Option) (filestore.Ref, error) {
	o := newOptions(opts)
	if err := ValidAgentID(agentID); err != nil {
		return filestore.Ref{}, err
	}
	if !validID(meta.TransferID) {
		return filestore.Ref{}, fmt.Errorf("filetransfer: send: %w: transfer id %q", ErrBadRequest, meta.TransferID)
	}
	ref, err := meta.Ref.Validate()
	if err != nil {
		return filestore.Ref{}, fmt.Errorf("filetransfer: send: %w", err)
	}
	meta.Ref = ref
	if meta.SHA256 != "" && !validSHA256(meta.SHA256) || meta.Size < 0 {
		return filestore.Ref{}, fmt.Errorf("filetransfer: send: %w: size %d sha256 %q", ErrBadRequest, meta.Size, meta.SHA256)
	}
	s := &sender{
		nc: nc, o: o, meta: meta, r: r,
		subj:  subjectPrefix + "." + agentID + ".",
		stats: o.stats,
	}
	if s.stats == nil {
		s.stats = &Stats{}
	}
	s.log = o.logger.With().Str("transfer", meta.TransferID).Stringer("ref", meta.Ref).Logger()
	if meta.SHA256 == "" {
		s.hash = newSendHash(meta.Size, min(o.chunkSize, maxChunkFor(nc)))
		defer s.hash.stop()
	}
	// Status changes interrupt a stream at once when the connection drops,
	// instead of after a chunk acknowledgement timeout.
	s.link = newLink(nc, o.reconnectTimeout)
	defer s.link.close()
	return s.run(ctx)
}

// SendFile uploads the file at path. A zero meta.Size is the file's size;
// an empty meta.SHA256 is computed while sending (see Send).
func SendFile(ctx context.Context, nc *nats.Conn, subjectPrefix, agentID string, meta Meta, path string, opts ...Option) (filestore.Ref, error) {
	f, err := os.Open(path)
	if err != nil {
		return filestore.Ref{}, fmt.Errorf("filetransfer: send: %w", err)
	}
	defer f.Close()
	if meta.Size == 0 {
		st, err := f.Stat()
		if err != nil {
			return filestore.Ref{}, fmt.Errorf("filetransfer: send: %w", err)
		}
		meta.Size = st.Size()
	}
	return Send(ctx, nc, subjectPrefix, agentID, meta, f, opts...)
}

type sender struct {
	nc    *nats.Conn
	o     options
	meta  Meta
	r     io.ReaderAt
	subj  string
	stats *Stats
	log   zerolog.Logger
	gen   uint64
	link  *link
	// hash computes the sha256 while sending when Meta.SHA256 is "".
	hash *sendHash
}

func (s *sender) run(ctx context.Context) (filestore.Ref, error) {
	failures := 0
	checksumFailures := 0
	reconnects := 0 // in a row, without progress
	var lastErr error
	for {
		if err := ctx.Err(); err != nil {
			return filestore.Ref{}, err
		}
		if failures > 0 {
			if failures > s.o.maxRetries {
				return filestore.Ref{}, fmt.Errorf("filetransfer: send %s: giving up after %d attempts: %w", s.meta.Ref, failures, lastErr)
			}
			d := s.o.backoff(failures)
			s.log.Debug().Err(lastErr).Dur("backoff", d).Msg("retrying upload")
			select {
			case <-ctx.Done():
				return filestore.Ref{}, ctx.Err()
			case <-time.After(d):
			}
		}
		ref, progressed, err := s.attempt(ctx)
		if err == nil {
			return ref, nil
		}
		if ctx.Err() != nil {
			return filestore.Ref{}, ctx.Err()
		}
		if progressed {
			failures, reconnects = 0, 0
		}
		if s.link.lost(err) {
			// Not a failure of the transfer: wait for the client to
			// reconnect (that wait is the backoff), then reopen, which
			// tells where the receiver is.
			if reconnects++; reconnects > s.o.maxRetries {
				return filestore.Ref{}, fmt.Errorf("filetransfer: send %s: connection lost %d times without progress: %w", s.meta.Ref, reconnects, err)
			}
			s.log.Info().Err(err).Msg("connection lost during upload; waiting for NATS to reconnect")
			if werr := s.link.await(ctx); werr != nil {
				return filestore.Ref{}, fmt.Errorf("filetransfer: send %s: %w (after: %v)", s.meta.Ref, werr, err)
			}
			s.stats.Reconnects++
			continue
		}
		if errors.Is(err, filestore.ErrChecksumMismatch) {
			// The receiver discarded the staged data; one full resend is
			// worth a try (the corruption may have been on its disk).
			checksumFailures++
			if checksumFailures > 1 {
				return filestore.Ref{}, fmt.Errorf("filetransfer: send %s: %w", s.meta.Ref, err)
			}
		} else if !retryable(err) {
			return filestore.Ref{}, fmt.Errorf("filetransfer: send %s: %w", s.meta.Ref, err)
		}
		failures++
		lastErr = err
	}
}

// attempt opens (or resumes) the transfer, streams what is missing and
// commits. progressed reports whether any chunk was acknowledged.
func (s *sender) attempt(ctx context.Context) (filestore.Ref, bool, error) {
	s.stats.Attempts++
	var open OpenReply
	req := OpenRequest{TransferID: s.meta.TransferID, Ref: s.meta.Ref, Size: s.meta.Size, SHA256: s.meta.SHA256}
	if err := s.request(ctx, "open", req, &open, s.o.requestTimeout); err != nil {
		return filestore.Ref{}, false, err
	}
	if err := open.Error.err(); err != nil {
		return filestore.Ref{}, false, err
	}
	if open.Offset < 0 || open.Offset > s.meta.Size {
		return filestore.Ref{}, false, fmt.Errorf("%w: receiver offset %d", ErrBadRequest, open.Offset)
	}
	s.stats.StartOffset = open.Offset
	if s.hash != nil {
		// What the receiver has from an earlier Send will not be read by
		// the stream: hash it now.
		if err := s.hash.catchUp(s.r, open.Offset); err != nil {
			return filestore.Ref{}, false, err
		}
	}
	if open.Offset > 0 {
		s.log.Debug().Int64("offset", open.Offset).Msg("resuming upload")
	}
	chunk := min(s.o.chunkSize, maxChunkFor(s.nc))
	if open.ChunkSize > 0 {
		chunk = min(chunk, open.ChunkSize)
	}
	// The receiver's window bounds its memory, so it has the last word;
	// without a window of its own the sender fills it.
	window := windowFor(s.o.window, chunk)
	if open.Window > 0 {
		if s.o.window > 0 {
			window = min(window, open.Window)
		} else {
			window = open.Window
		}
	}
	acked, err := s.stream(ctx, open.Offset, chunk, window)
	progressed := acked > open.Offset
	if err != nil {
		return filestore.Ref{}, progressed, err
	}
	commit := TransferRequest{TransferID: s.meta.TransferID}
	s.stats.SHA256 = s.meta.SHA256
	if s.hash != nil {
		// The open said nothing of the sum (and goes on saying nothing, so
		// that a reopen describes the same transfer): the commit tells it.
		sum, err := s.hash.finish(s.r)
		if err != nil {
			return filestore.Ref{}, true, err
		}
		commit.SHA256, s.stats.SHA256 = sum, sum
	}
	var done CommitReply
	if err := s.request(ctx, "commit", commit, &done, s.o.commitTimeout+CommitTime(s.meta.Size)); err != nil {
		return filestore.Ref{}, true, err
	}
	if err := done.Error.err(); err != nil {
		return filestore.Ref{}, true, err
	}
	return done.Ref, true, nil
}

func (s *sender) request(ctx context.Context, verb string, req, reply any, timeout time.Duration) error {
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A reply to a request sent just before the connection dropped never
	// comes: stop waiting as soon as the client notices.
	stop, _ := s.link.cancelOnDrop(cancel)
	defer stop()
	m, err := s.nc.RequestWithContext(rctx, s.subj+verb, data)
	if err != nil {
		if ctx.Err() == nil && s.link.down() {
			return fmt.Errorf("%s: %w: %v", verb, errDisconnected, err)
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return fmt.Errorf("%s: %w", verb, ErrTimeout)
		}
		return fmt.Errorf("%s: %w", verb, err)
	}
	if err := json.Unmarshal(m.Data, reply); err != nil {
		return fmt.Errorf("%s: %w: reply: %v", verb, ErrBadRequest, err)
	}
	return nil
}

// stream sends the chunks from offset start on, with up to window chunks
// awaiting acknowledgement, until the receiver has everything. It returns the
// highest acknowledged offset.
//
// Each go-back (a lost, refused or corrupted chunk) starts a new generation;
// replies carry the generation of the chunk they answer, so the flood of
// "offset mismatch" replies to chunks sent before the go-back is recognised
// as stale instead of triggering go-backs of its own.
func (s *sender) stream(ctx context.Context, start int64, chunkSize, window int) (int64, error) {
	size := s.meta.Size
	if start >= size {
		return start, nil
	}
	replies := make(chan *nats.Msg, window*4)
	inbox := s.nc.NewInbox()
	sub, err := s.nc.ChanSubscribe(inbox, replies)
	if err != nil {
		return start, fmt.Errorf("subscribe replies: %w", err)
	}
	defer sub.Unsubscribe()

	w := &chunkWindow{
		s: s, size: size, chunkSize: chunkSize, window: window,
		inbox: inbox, replies: replies, buf: make([]byte, chunkSize),
		next: start, acked: start, sentMax: start,
		timer: time.NewTimer(s.o.requestTimeout),
	}
	defer w.timer.Stop()
	s.gen++
	for w.acked < size {
		if err := w.fill(); err != nil {
			return w.acked, err
		}
		if err := w.await(ctx); err != nil {
			return w.acked, err
		}
	}
	return w.acked, nil
}

// chunkWindow is the state of one stream call: what was sent, what the
// receiver acknowledged, and the timer that runs out when no reply of the
// current generation comes.
type chunkWindow struct {
	s         *sender
	size      int64
	chunkSize int
	window    int
	inbox     string
	replies   chan *nats.Msg
	buf       []byte // resends are read into it

	next     int64 // offset of the next chunk to send
	acked    int64 // highest offset the receiver acknowledged
	sentMax  int64 // highest offset ever sent, to count resends
	inflight int   // chunks of this generation awaiting a reply
	timer    *time.Timer
}

// fill sends chunks until window of them await a reply or the file is sent.
func (w *chunkWindow) fill() error {
	s := w.s
	for w.inflight < w.window && w.next < w.size {
		if !s.nc.IsConnected() {
			// Publishing now would only fill the reconnect buffer.
			return s.link.connErr()
		}
		n := int(min(int64(w.chunkSize), w.size-w.next))
		if err := w.send(n); err != nil {
			return err
		}
		s.stats.BytesSent += int64(n)
		if w.next < w.sentMax {
			s.stats.Resends++
		}
		w.next += int64(n)
		w.sentMax = max(w.sentMax, w.next)
		w.inflight++
	}
	return nil
}

// send reads the n bytes at w.next and publishes them as one chunk.
//
// A chunk read for the first time goes to the sha256 after it is sent (when
// the sum was not given), in a buffer of its own; resends use w.buf.
func (w *chunkWindow) send(n int) error {
	s := w.s
	data := w.buf[:n]
	fresh := false
	if s.hash != nil {
		if err := s.hash.catchUp(s.r, w.next); err != nil {
			return err
		}
		if fresh = s.hash.fresh(w.next); fresh {
			data = s.hash.get(n)
		}
	}
	if err := readFull(s.r, data, w.next); err != nil {
		if fresh {
			s.hash.release(data)
		}
		return err
	}
	msg := nats.NewMsg(s.subj + "chunk")
	msg.Reply = w.inbox
	msg.Header.Set(HeaderTransfer, s.meta.TransferID)
	msg.Header.Set(HeaderOffset, strconv.FormatInt(w.next, 10))
	msg.Header.Set(HeaderCRC32C, strconv.FormatUint(uint64(crc32c(data)), 16))
	msg.Header.Set(HeaderGen, strconv.FormatUint(s.gen, 10))
	msg.Data = data
	if s.o.testCorrupt != nil {
		// Corrupt a copy: the data is re-read for the resend anyway.
		cp := append([]byte(nil), data...)
		s.o.testCorrupt(w.next, cp)
		msg.Data = cp
	}
	// PublishMsg copies the payload into the client's buffer, so data is
	// free for the next chunk (or the hash) when it returns.
	err := s.nc.PublishMsg(msg)
	if fresh {
		// Hashed whether or not it got out: it is the file's.
		s.hash.put(data)
	}
	if err != nil {
		// A write error on the socket ("broken pipe") may come before the
		// client noticed the connection is gone.
		if !s.nc.IsClosed() && !errors.Is(err, nats.ErrMaxPayload) {
			err = fmt.Errorf("%w: %w", errDisconnected, err)
		}
		return fmt.Errorf("publish chunk: %w", err)
	}
	return nil
}

// await waits for one event: a reply, a change of the connection, the
// timer, or the end of ctx.
func (w *chunkWindow) await(ctx context.Context) error {
	s := w.s
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-w.timer.C:
		return fmt.Errorf("chunk acknowledgement: %w", ErrTimeout)
	case <-s.link.status:
		if !s.nc.IsConnected() {
			return s.link.connErr()
		}
		return nil
	case m, ok := <-w.replies:
		if !ok {
			return nats.ErrConnectionClosed
		}
		return w.reply(ctx, m)
	}
}

// reply takes in the receiver's answer to a chunk.
func (w *chunkWindow) reply(ctx context.Context, m *nats.Msg) error {
	s := w.s
	if isNoResponders(m) {
		return nats.ErrNoResponders
	}
	var rep ChunkReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return fmt.Errorf("%w: chunk reply: %v", ErrBadRequest, err)
	}
	if rep.Error == nil && rep.Offset > w.acked {
		w.acked = min(rep.Offset, w.size)
		if s.o.progress != nil {
			s.o.progress(w.acked, w.size)
		}
	}
	if rep.Gen != s.gen {
		return nil // answers a chunk from before the last go-back
	}
	w.resetTimer()
	if rep.Error == nil {
		w.inflight--
		return nil
	}
	err := rep.Error.err()
	if !errors.Is(err, ErrOffsetMismatch) && !errors.Is(err, ErrChunkChecksum) && !errors.Is(err, ErrBusy) {
		return err
	}
	if err := w.goBack(ctx, rep.Offset, err); err != nil {
		return err
	}
	if s.nc.IsClosed() {
		return nats.ErrConnectionClosed
	}
	return nil
}

// goBack resumes sending where the receiver is (offset, or the highest
// acknowledged offset when the receiver did not say) in a new generation;
// a busy receiver gets a pause first.
func (w *chunkWindow) goBack(ctx context.Context, offset int64, cause error) error {
	s := w.s
	if offset >= 0 {
		w.acked = max(w.acked, offset)
		w.next = offset
	} else {
		w.next = w.acked
	}
	s.gen++
	w.inflight = 0
	if errors.Is(cause, ErrBusy) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.o.backoffMin):
		}
	}
	s.log.Debug().Err(cause).Int64("offset", w.next).Msg("going back")
	return nil
}

// resetTimer restarts the acknowledgement timer after a reply of the
// current generation.
func (w *chunkWindow) resetTimer() {
	w.timer.Stop()
	select {
	case <-w.timer.C:
	default:
	}
	w.timer.Reset(w.s.o.requestTimeout)
}
