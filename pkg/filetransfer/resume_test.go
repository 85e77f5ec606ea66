package filetransfer

import (
	"bytes"
	"context"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/natsembed"
)

// reconnecting is a client that comes back quickly after a drop, as the
// agent's does.
func reconnecting(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc
}

// restartable is an embedded NATS server (JetStream on a file store) that
// a test stops and starts again on the same port and store, as a broker
// restart does, with a broker's and an agent's connection that reconnect
// to it (TCP: a client of the in-process kind cannot reconnect to a new
// server) and a file store.
type restartable struct {
	root          string
	broker, agent *nats.Conn
	store         *diskstore.Store

	ctx context.Context
	cfg natsembed.Config
	mu  sync.Mutex // held from stop to start
	srv *natsembed.Server
}

func startRestartable(t *testing.T) *restartable {
	t.Helper()
	rs := &restartable{root: t.TempDir(), ctx: context.Background()}
	rs.cfg = natsembed.Config{StoreDir: filepath.Join(rs.root, "nats"), Port: -1, Logger: zerolog.Nop()}
	srv, err := natsembed.Start(rs.ctx, rs.cfg)
	require.NoError(t, err)
	rs.srv = srv
	u, err := url.Parse(srv.ClientURL())
	require.NoError(t, err)
	rs.cfg.Port, err = strconv.Atoi(u.Port())
	require.NoError(t, err)
	t.Cleanup(func() {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		_ = rs.srv.Stop(context.Background())
	})
	rs.broker = reconnecting(t, srv.ClientURL())
	rs.agent = reconnecting(t, srv.ClientURL())
	layout := datalayout.New(filepath.Join(rs.root, "data"))
	require.NoError(t, layout.Ensure())
	rs.store = diskstore.New(layout)
	return rs
}

// stop shuts the server down; start must follow.
func (rs *restartable) stop() {
	rs.mu.Lock()
	_ = rs.srv.Stop(context.Background())
}

// start brings the server up again on the same port and store.
func (rs *restartable) start() error {
	defer rs.mu.Unlock()
	again, err := natsembed.Start(rs.ctx, rs.cfg)
	if err == nil {
		rs.srv = again
	}
	return err
}

// resentAtMost is what a cut may cost: the chunks in flight when it
// happened (one window) and one more chunk.
func resentAtMost(nc *nats.Conn) int64 {
	chunk := int64(min(DefaultChunkSize, maxChunkFor(nc)))
	return int64(windowFor(0, int(chunk)))*chunk + chunk
}

// TestSendSurvivesKickedConnection: the server drops the agent's
// connection a third of the way into an upload (as a server does with a
// slow or stale client, or a network blip); the client reconnects and the
// same Send resumes from what the receiver has.
func TestSendSurvivesKickedConnection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	nc := reconnecting(t, b.srv.ClientURL())
	data := randomBytes(t, 48<<20)
	m := meta("kicked", outRef("kicked.bin"), data)

	var once sync.Once
	var stats Stats
	ref, err := Send(b.ctx, nc, DefaultPutPrefix, agent, m, bytes.NewReader(data), WithStats(&stats),
		WithProgress(func(done, total int64) {
			if done >= total/3 {
				once.Do(func() {
					cid, err := nc.GetClientID()
					require.NoError(t, err)
					require.NoError(t, b.srv.DisconnectClientByID(cid))
				})
			}
		}))
	require.NoError(t, err)
	requireSame(t, data, readStored(t, b, ref))
	require.GreaterOrEqual(t, stats.Reconnects, 1, "the cut happened during the Send")
	require.Greater(t, stats.StartOffset, int64(0), "resumed, not restarted")
	resent := stats.BytesSent - int64(len(data))
	require.LessOrEqual(t, resent, resentAtMost(nc), "re-sent at most what was in flight")
	t.Logf("reconnected %d time(s), resumed at %d MiB, re-sent %d KiB", stats.Reconnects, stats.StartOffset>>20, resent>>10)
}

// TestSendSurvivesServerRestart: the broker's embedded NATS server (with
// JetStream) stops a third of the way into an upload and starts again on
// the same port and store. Both the agent's and the broker's connections
// reconnect; the Send in progress completes without starting over.
func TestSendSurvivesServerRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rs := startRestartable(t)
	brokerConn, agentConn, store := rs.broker, rs.agent, rs.store
	r, err := NewReceiver(ReceiverConfig{Conn: brokerConn, Store: store, StagingDir: filepath.Join(rs.root, "staging")})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })

	data := randomBytes(t, 48<<20)
	m := meta("restarted", outRef("restarted.bin"), data)
	var once sync.Once
	restarted := make(chan error, 1)
	var stats Stats
	ref, err := Send(ctx, agentConn, DefaultPutPrefix, agent, m, bytes.NewReader(data), WithStats(&stats),
		WithProgress(func(done, total int64) {
			if done >= total/3 {
				once.Do(func() {
					// Down before the Send goes on (it could finish
					// first otherwise), up again in the background.
					rs.stop()
					go func() { restarted <- rs.start() }()
				})
			}
		}))
	require.NoError(t, <-restarted, "restart the server on the same port and store")
	require.NoError(t, err)

	f, err := store.Open(ctx, ref)
	require.NoError(t, err)
	defer f.Close()
	got := make([]byte, len(data)+1)
	n, _ := f.ReadAt(got, 0)
	requireSame(t, data, got[:n])
	require.GreaterOrEqual(t, stats.Reconnects, 1, "the cut happened during the Send")
	require.Greater(t, stats.StartOffset, int64(0), "resumed, not restarted")
	resent := stats.BytesSent - int64(len(data))
	require.LessOrEqual(t, resent, resentAtMost(agentConn), "re-sent at most what was in flight")
	t.Logf("reconnected %d time(s), resumed at %d MiB, re-sent %d KiB", stats.Reconnects, stats.StartOffset>>20, resent>>10)
}

// TestSendGivesUpWhenNATSStaysAway: a connection that does not come back
// within the reconnect timeout ends the Send with ErrTimeout, not a hang.
func TestSendGivesUpWhenNATSStaysAway(t *testing.T) {
	t.Parallel()
	b := setup(t)
	nc := reconnecting(t, b.srv.ClientURL())
	data := randomBytes(t, 16<<20)
	m := meta("away", outRef("away.bin"), data)
	var once sync.Once
	_, err := Send(b.ctx, nc, DefaultPutPrefix, agent, m, bytes.NewReader(data), WithReconnectTimeout(300*time.Millisecond),
		WithProgress(func(done, total int64) {
			once.Do(func() { go b.srv.Shutdown() })
		}))
	require.ErrorIs(t, err, ErrTimeout)
}

// TestResumeUnderANewName: an agent restarted mid-upload re-runs the job,
// and ComfyUI saves the same output under its next counter. The upload of
// the same content (same transfer id, size and sha256) under the new name
// carries the staged part over instead of starting over, and the file is
// stored under the new name only.
func TestResumeUnderANewName(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := randomBytes(t, 24<<20)
	first := meta("rerun", outRef("LTX_00001_.mp4"), data)

	b.sendUntilAgentDies(t, first, data, 2)

	again := first
	again.Ref = outRef("LTX_00002_.mp4")
	var stats Stats
	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, again, bytes.NewReader(data), WithStats(&stats))
	require.NoError(t, err)
	require.Equal(t, again.Ref, ref)
	requireSame(t, data, readStored(t, b, ref))
	require.GreaterOrEqual(t, stats.StartOffset, int64(len(data)/2), "resumed from the staged part")
	_, err = b.store.Stat(b.ctx, first.Ref)
	require.ErrorIs(t, err, filestore.ErrNotFound, "nothing stored under the first name")
}

// slowStore is a store that copies at commit, slowly, as an S3 bucket
// does with a multi-GB file: it is not an Importer, and its writers take
// delay to commit.
type slowStore struct {
	filestore.Store
	delay time.Duration
}

func (s slowStore) Create(ctx context.Context, ref filestore.Ref, opts ...filestore.CreateOption) (filestore.Writer, error) {
	w, err := s.Store.Create(ctx, ref, opts...)
	return slowWriter{w, s.delay}, err
}

type slowWriter struct {
	filestore.Writer
	delay time.Duration
}

func (w slowWriter) Commit(ctx context.Context, sum string) (filestore.Info, error) {
	select {
	case <-ctx.Done():
		return filestore.Info{}, ctx.Err()
	case <-time.After(w.delay):
	}
	return w.Writer.Commit(ctx, sum)
}

// TestSlowStoreCommit: the wait for the commit reply grows with the file
// (CommitTime), so a store that takes longer than the fixed commit timeout
// to take the file is waited for, not retried.
func TestSlowStoreCommit(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 32<<20)
	// Far beyond the fixed commit timeout, far below the commit's whole
	// allowance: the copy into the store takes the rest, on a loaded
	// machine too.
	delay := CommitTime(int64(len(data))) / 4
	b := setup(t, func(c *ReceiverConfig) { c.Store = slowStore{c.Store, delay} })
	var stats Stats
	start := time.Now()
	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, meta("slow", outRef("slow.mp4"), data), bytes.NewReader(data),
		WithStats(&stats), WithCommitTimeout(100*time.Millisecond))
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), delay, "the store was slow")
	require.Equal(t, 1, stats.Attempts, "the commit was waited for, not retried")
	requireSame(t, data, readStored(t, b, ref))
}
