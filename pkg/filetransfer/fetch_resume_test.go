package filetransfer

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// storeInput puts data into st as a participant's input file.
func storeInput(t testing.TB, st filestore.Store, ref filestore.Ref, data []byte) {
	t.Helper()
	w, err := st.Create(context.Background(), ref)
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	_, err = w.Commit(context.Background(), hexSum(data))
	require.NoError(t, err)
}

func inRef(name string) filestore.Ref {
	return filestore.Ref{User: "user007", Kind: filestore.KindInput, Subfolder: "refs", Name: name}
}

// corruptOnce flips a bit of the first chunk, sent or fetched, for which
// when(offset) holds, once, and reports the offset it corrupted.
func corruptOnce(when func(offset int64) bool, hit *atomic.Int64) Option {
	var once sync.Once
	return func(o *options) {
		o.testCorrupt = func(off int64, chunk []byte) {
			if when(off) {
				once.Do(func() {
					chunk[len(chunk)/2] ^= 0x40
					hit.Store(off)
				})
			}
		}
	}
}

// afterReconnect holds for offsets from `from` on once nc has reconnected.
// nats.go counts a reconnection before it lets anything be published on the
// new connection, so a chunk it lets through was sent (or fetched) after it:
// that chunk reaches the other side, where its corruption is detected,
// instead of being lost with the dropped connection. (Waiting for progress
// to pass an offset instead is racy: after the resume the whole rest of a
// file can be in flight before the first acknowledgement arrives.)
func afterReconnect(nc *nats.Conn, from int64) func(int64) bool {
	return func(off int64) bool { return off >= from && nc.Stats().Reconnects > 0 }
}

// TestFetchSurvivesKickedConnection: the server drops the agent's
// connection a third of the way into a download of a video input; the
// client reconnects and the same FetchFile goes on from what it wrote,
// fetching again at most what was in flight. A chunk corrupted after the
// reconnection is detected by its CRC and fetched again.
func TestFetchSurvivesKickedConnection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := randomBytes(t, 48<<20)
	ref := inRef("kicked.mp4")
	storeInput(t, b.store, ref, data)
	nc := reconnecting(t, b.srv.ClientURL())

	var kick sync.Once
	var corrupted atomic.Int64
	var stats Stats
	dest := filepath.Join(t.TempDir(), "inputs", "user007", "kicked.mp4")
	info, err := FetchFile(b.ctx, nc, DefaultGetPrefix, agent, ref, dest, hexSum(data), WithStats(&stats),
		corruptOnce(afterReconnect(nc, int64(len(data))*2/3), &corrupted),
		WithProgress(func(done, total int64) {
			if done >= total/3 {
				kick.Do(func() {
					cid, err := nc.GetClientID()
					require.NoError(t, err)
					require.NoError(t, b.srv.DisconnectClientByID(cid))
				})
			}
		}))
	require.NoError(t, err)
	require.Equal(t, hexSum(data), info.SHA256)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	requireSame(t, data, got)

	require.GreaterOrEqual(t, stats.Reconnects, 1, "the cut happened during the fetch")
	require.Greater(t, stats.StartOffset, int64(0), "went on from what it had, not from the start")
	require.Greater(t, corrupted.Load(), int64(0), "a chunk was corrupted after the reconnection")
	require.GreaterOrEqual(t, stats.Resends, int64(1), "the corrupted chunk was fetched again")
	again := stats.BytesSent - int64(len(data))
	require.LessOrEqual(t, again, resentAtMost(nc)+int64(min(DefaultChunkSize, maxChunkFor(nc))),
		"fetched again at most what was in flight and the corrupted chunk")
	matches, _ := filepath.Glob(dest + ".*")
	require.Empty(t, matches, "no part or state file left")
	t.Logf("reconnected %d time(s), went on at %d MiB, fetched %d KiB again, corrupted chunk at %d MiB",
		stats.Reconnects, stats.StartOffset>>20, again>>10, corrupted.Load()>>20)
}

// TestFetchSurvivesServerRestart: the broker's embedded NATS server (with
// JetStream) stops a third of the way into a download and starts again on
// the same port and store. Both connections reconnect; the FetchFile in
// progress completes without starting over.
func TestFetchSurvivesServerRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rs := startRestartable(t)
	brokerConn, agentConn, store := rs.broker, rs.agent, rs.store
	s, err := NewServer(ServerConfig{Conn: brokerConn, Store: store})
	require.NoError(t, err)
	require.NoError(t, s.Start(ctx))
	t.Cleanup(func() { _ = s.Stop(context.Background()) })

	data := randomBytes(t, 48<<20)
	ref := inRef("restarted.mp4")
	storeInput(t, store, ref, data)

	var once sync.Once
	restarted := make(chan error, 1)
	var stats Stats
	dest := filepath.Join(t.TempDir(), "restarted.mp4")
	_, err = FetchFile(ctx, agentConn, DefaultGetPrefix, agent, ref, dest, hexSum(data), WithStats(&stats),
		WithProgress(func(done, total int64) {
			if done >= total/3 {
				once.Do(func() {
					// Down before the fetch goes on (it could finish
					// first otherwise), up again in the background.
					rs.stop()
					go func() { restarted <- rs.start() }()
				})
			}
		}))
	require.NoError(t, <-restarted, "restart the server on the same port and store")
	require.NoError(t, err)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	requireSame(t, data, got)
	require.GreaterOrEqual(t, stats.Reconnects, 1, "the cut happened during the fetch")
	require.Greater(t, stats.StartOffset, int64(0), "went on from what it had, not from the start")
	again := stats.BytesSent - int64(len(data))
	require.LessOrEqual(t, again, resentAtMost(agentConn), "fetched again at most what was in flight")
	t.Logf("reconnected %d time(s), went on at %d MiB, fetched %d KiB again", stats.Reconnects, stats.StartOffset>>20, again>>10)
}

// TestFetchFileResumesFromSavedState: a FetchFile whose connection stays
// away gives up, keeping the part file and the sha256 state of its bytes;
// the next call (a later job needing the same input) goes on from there
// and the file is whole. A state that does not match the part (more bytes
// than it holds) is ignored and the part hashed instead.
func TestFetchFileResumesFromSavedState(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := randomBytes(t, 32<<20)
	ref := inRef("away.mp4")
	storeInput(t, b.store, ref, data)
	dest := filepath.Join(t.TempDir(), "away.mp4")
	part, state := partPaths(dest, hexSum(data), "")

	// The first attempt goes through a server that goes away for good.
	away := startNATS(t)
	srv, err := NewServer(ServerConfig{Conn: connect(t, away), Store: b.store})
	require.NoError(t, err)
	require.NoError(t, srv.Start(b.ctx))
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	nc := reconnecting(t, away.ClientURL())
	var once sync.Once
	_, err = FetchFile(b.ctx, nc, DefaultGetPrefix, agent, ref, dest, hexSum(data), WithReconnectTimeout(300*time.Millisecond),
		WithProgress(func(done, total int64) {
			if done >= total/2 {
				once.Do(away.Shutdown) // before the fetch goes on
			}
		}))
	require.ErrorIs(t, err, ErrTimeout)
	fi, err := os.Stat(part)
	require.NoError(t, err, "the part file stays")
	require.GreaterOrEqual(t, fi.Size(), int64(len(data)/2))
	st, err := os.ReadFile(state)
	require.NoError(t, err, "and the sha256 state of its bytes")
	require.Equal(t, uint64(fi.Size()), binary.BigEndian.Uint64(st))

	var stats Stats
	_, err = FetchFile(b.ctx, b.agent, DefaultGetPrefix, agent, ref, dest, hexSum(data), WithStats(&stats))
	require.NoError(t, err)
	require.Equal(t, fi.Size(), stats.StartOffset)
	require.Equal(t, int64(len(data))-fi.Size(), stats.BytesSent)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	requireSame(t, data, got)
	require.NoFileExists(t, state)

	// A state claiming more than the part has is not trusted.
	dest2 := filepath.Join(t.TempDir(), "away.mp4")
	part2, state2 := partPaths(dest2, hexSum(data), "")
	require.NoError(t, os.WriteFile(part2, data[:3<<20], 0o600))
	require.NoError(t, os.WriteFile(state2, append(binary.BigEndian.AppendUint64(nil, 8<<20), st[8:]...), 0o600))
	stats = Stats{}
	_, err = FetchFile(b.ctx, b.agent, DefaultGetPrefix, agent, ref, dest2, hexSum(data), WithStats(&stats))
	require.NoError(t, err)
	require.Equal(t, int64(3<<20), stats.StartOffset)
	got, err = os.ReadFile(dest2)
	require.NoError(t, err)
	requireSame(t, data, got)
}
