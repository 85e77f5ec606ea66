package filetransfer

import (
	"time"

	"github.com/rs/zerolog"
)

// Option tunes Send and Fetch.
type Option func(*options)

type options struct {
	chunkSize        int
	window           int
	requestTimeout   time.Duration
	commitTimeout    time.Duration
	reconnectTimeout time.Duration
	maxRetries       int
	backoffMin       time.Duration
	backoffMax       time.Duration
	logger           zerolog.Logger
	stats            *Stats
	progress         func(done, total int64)

	// testCorrupt, when set, may alter a chunk after its checksum was
	// computed (tests inject corruption on the wire with it).
	testCorrupt func(offset int64, data []byte)
}

func newOptions(opts []Option) options {
	o := options{
		chunkSize:        DefaultChunkSize,
		requestTimeout:   10 * time.Second,
		commitTimeout:    2 * time.Minute,
		reconnectTimeout: 5 * time.Minute,
		maxRetries:       8,
		backoffMin:       100 * time.Millisecond,
		backoffMax:       10 * time.Second,
		logger:           zerolog.Nop(),
	}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithChunkSize sets the chunk size (bytes). The effective size is the
// smallest of this, the peer's limit and the connection's max payload minus
// room for headers. Default DefaultChunkSize.
func WithChunkSize(n int) Option { return func(o *options) { o.chunkSize = n } }

// WithWindow sets how many chunks may be in flight. The receiver's advertised
// window caps it on uploads. Default: DefaultWindowBytes worth of chunks.
func WithWindow(n int) Option { return func(o *options) { o.window = n } }

// WithRequestTimeout bounds the wait for each reply (open, stat, a chunk
// acknowledgement). Default 10 s.
func WithRequestTimeout(d time.Duration) Option { return func(o *options) { o.requestTimeout = d } }

// WithCommitTimeout bounds the wait for the commit reply, which includes
// moving the file into the store, before the size-dependent allowance of
// CommitTime is added. Default 2 min.
func WithCommitTimeout(d time.Duration) Option { return func(o *options) { o.commitTimeout = d } }

// CommitRate is the slowest rate at which a store is expected to take a
// committed file: a store that cannot rename the staged file into place (an
// S3 bucket) copies it at commit, which for a multi-GB video takes minutes,
// not seconds.
const CommitRate = 16 << 20 // bytes per second

// CommitTime is what a commit of size bytes may take beyond the fixed
// timeout: the copy into a store at CommitRate.
func CommitTime(size int64) time.Duration {
	return time.Duration(size / CommitRate * int64(time.Second))
}

// WithReconnectTimeout bounds how long Send and Fetch wait for a dropped
// connection to come back before giving up. Default 5 min.
func WithReconnectTimeout(d time.Duration) Option { return func(o *options) { o.reconnectTimeout = d } }

// WithRetries sets how many consecutive failed attempts (timeouts, no
// responders, busy) are retried before giving up. Progress resets the count.
// Default 8.
func WithRetries(n int) Option { return func(o *options) { o.maxRetries = n } }

// WithBackoff sets the first and the largest pause between retries; pauses
// double in between. Default 100 ms to 10 s.
func WithBackoff(minDelay, maxDelay time.Duration) Option {
	return func(o *options) { o.backoffMin, o.backoffMax = minDelay, maxDelay }
}

// WithLogger logs retries and resumes.
func WithLogger(l zerolog.Logger) Option { return func(o *options) { o.logger = l } }

// WithStats collects counters of the transfer into s.
func WithStats(s *Stats) Option { return func(o *options) { o.stats = s } }

// WithProgress calls fn with the bytes confirmed so far and the total. It is
// called from the transferring goroutine; keep it short.
func WithProgress(fn func(done, total int64)) Option { return func(o *options) { o.progress = fn } }

// Stats counts what a Send or Fetch did.
type Stats struct {
	// StartOffset is where the (last) attempt resumed.
	StartOffset int64
	// BytesSent counts chunk payload bytes put on the wire (uploads) or
	// received (downloads), resends included.
	BytesSent int64
	// Resends counts chunks sent again (after a go-back or a checksum error).
	Resends int64
	// Attempts counts opens (uploads) or chunk request retries (downloads).
	Attempts int
	// Reconnects counts the times a transfer waited for the connection to
	// come back and resumed.
	Reconnects int
	// SHA256 of the file an upload committed (computed while sending when
	// Meta.SHA256 was "").
	SHA256 string
}

// DefaultWindowBytes is how much data may be in flight by default: enough to
// keep a loopback or LAN link busy, small enough that the receiver's memory
// (which holds the window several times over, counting the NATS server's and
// client's buffers and the garbage collector's slack) stays below 100 MB per
// transfer. Measured on the 4 GiB benchmark with direct staging writes:
// 16 MiB in 4 MiB chunks grew the broker by 105-122 MB, 12 MiB in 2 MiB
// chunks by 65 MB at the same rate (docs/BENCHMARKS.md).
const DefaultWindowBytes = 12 << 20

// windowFor is the number of chunks in flight: n when set, else
// DefaultWindowBytes worth of chunks, at least 2.
func windowFor(n, chunkSize int) int {
	if n > 0 {
		return n
	}
	return max(2, DefaultWindowBytes/max(chunkSize, 1))
}

func (o *options) backoff(attempt int) time.Duration {
	d := o.backoffMin
	for i := 1; i < attempt && d < o.backoffMax; i++ {
		d *= 2
	}
	return min(d, o.backoffMax)
}
