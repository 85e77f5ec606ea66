package filetransfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
)

const agent = "gpu-1"

type testBundle struct {
	ctx      context.Context
	srv      *server.Server
	layout   datalayout.Layout
	store    *diskstore.Store
	staging  string
	broker   *nats.Conn
	agent    *nats.Conn
	receiver *Receiver
	server   *Server
}

func startNATS(t testing.TB) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: false, NoSigs: true, NoLog: true})
	require.NoError(t, err)
	go s.Start()
	require.True(t, s.ReadyForConnections(testutil.WaitTimeout()))
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func connect(t testing.TB, s *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(-1))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc
}

// sendUntilAgentDies starts uploading data as m on a connection of its
// own and closes that connection (the agent dies) once the receiver has
// acknowledged 1/part of it: the receiver keeps the staged part.
func (b *testBundle) sendUntilAgentDies(t *testing.T, m Meta, data []byte, part int64) {
	t.Helper()
	nc := connect(t, b.srv)
	var once sync.Once
	_, err := Send(b.ctx, nc, DefaultPutPrefix, agent, m, bytes.NewReader(data),
		WithProgress(func(done, total int64) {
			if done >= total/part {
				once.Do(nc.Close)
			}
		}))
	require.ErrorIs(t, err, nats.ErrConnectionClosed)
}

func setup(t testing.TB, mutate ...func(*ReceiverConfig)) *testBundle {
	t.Helper()
	return setupWithSignals(t, nil, mutate...)
}

// setupWithSignals is setup with the receiver's test signals that signals
// Inits turned on before it starts.
func setupWithSignals(t testing.TB, signals func(*receiverSignals), mutate ...func(*ReceiverConfig)) *testBundle {
	t.Helper()
	b := &testBundle{ctx: context.Background()}
	b.srv = startNATS(t)
	root := t.TempDir()
	b.layout = datalayout.New(filepath.Join(root, "data"))
	require.NoError(t, b.layout.Ensure())
	b.store = diskstore.New(b.layout)
	b.staging = filepath.Join(root, "data", "staging")
	b.broker = connect(t, b.srv)
	b.agent = connect(t, b.srv)

	cfg := ReceiverConfig{Conn: b.broker, Store: b.store, StagingDir: b.staging}
	for _, m := range mutate {
		m(&cfg)
	}
	r, err := NewReceiver(cfg)
	require.NoError(t, err)
	if signals != nil {
		signals(&r.signals)
	}
	require.NoError(t, r.Start(b.ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	b.receiver = r

	srv, err := NewServer(ServerConfig{Conn: b.broker, Store: b.store})
	require.NoError(t, err)
	require.NoError(t, srv.Start(b.ctx))
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	b.server = srv
	return b
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	data := make([]byte, n)
	_, _ = rand.Read(data)
	return data
}

func hexSum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func outRef(name string) filestore.Ref {
	return filestore.Ref{User: "user007", Kind: filestore.KindOutput, Name: name}
}

func meta(id string, ref filestore.Ref, data []byte) Meta {
	return Meta{TransferID: TransferID(id), Ref: ref, Size: int64(len(data)), SHA256: hexSum(data)}
}

func readStored(t testing.TB, b *testBundle, ref filestore.Ref) []byte {
	t.Helper()
	f, err := b.store.Open(b.ctx, ref)
	require.NoError(t, err)
	defer f.Close()
	data, err := io.ReadAll(f)
	require.NoError(t, err)
	return data
}

func TestSendSmall(t *testing.T) {
	t.Parallel()
	b := setup(t)

	data := []byte("a small PNG, honestly")
	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, meta("small", outRef("ComfyUI_00001_.png"), data), bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, outRef("ComfyUI_00001_.png"), ref)
	requireSame(t, data, readStored(t, b, ref))

	// Empty files work too.
	ref, err = Send(b.ctx, b.agent, DefaultPutPrefix, agent, meta("empty", outRef("empty.txt"), nil), bytes.NewReader(nil))
	require.NoError(t, err)
	require.Empty(t, readStored(t, b, ref))

	// Staging is cleaned up.
	entries, err := os.ReadDir(filepath.Join(b.staging, agent))
	require.NoError(t, err)
	require.Empty(t, entries)
}

func TestSendNamingRules(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a, c := []byte("content A"), []byte("content C")

	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, meta("n1", outRef("x.png"), a), bytes.NewReader(a))
	require.NoError(t, err)
	require.Equal(t, "x.png", ref.Name)

	// Same content again (a retried job): reused, nothing new written.
	ref, err = Send(b.ctx, b.agent, DefaultPutPrefix, agent, meta("n2", outRef("x.png"), a), bytes.NewReader(a))
	require.NoError(t, err)
	require.Equal(t, "x.png", ref.Name)

	// Different content with the same name: ComfyUI's rename rule.
	ref, err = Send(b.ctx, b.agent, DefaultPutPrefix, agent, meta("n3", outRef("x.png"), c), bytes.NewReader(c))
	require.NoError(t, err)
	require.Equal(t, "x (1).png", ref.Name)
	requireSame(t, c, readStored(t, b, ref))
}

func TestSend64MiB(t *testing.T) {
	t.Parallel()
	b := setup(t)

	data := randomBytes(t, 64<<20)
	path := filepath.Join(t.TempDir(), "video.mp4")
	require.NoError(t, os.WriteFile(path, data, 0o600))

	var stats Stats
	ref, err := SendFile(b.ctx, b.agent, DefaultPutPrefix, agent,
		Meta{TransferID: TransferID("job-1", "1", "video.mp4"), Ref: filestore.Ref{User: "user007", Kind: filestore.KindOutput, Subfolder: "video", Name: "video.mp4"}},
		path, WithStats(&stats))
	require.NoError(t, err)
	info, err := b.store.Stat(b.ctx, ref)
	require.NoError(t, err)
	require.Equal(t, hexSum(data), info.SHA256)
	require.Equal(t, int64(len(data)), info.Size)
	stored, err := filestore.SHA256Of(b.ctx, b.store, ref)
	require.NoError(t, err)
	require.Equal(t, hexSum(data), stored)
	require.Equal(t, int64(len(data)), stats.BytesSent, "nothing sent twice")
}

func TestResumeAfterConnectionClosed(t *testing.T) {
	t.Parallel()
	b := setup(t)

	data := randomBytes(t, 32<<20)
	m := meta("resume", outRef("resume.bin"), data)

	// First attempt: the agent's connection dies a third of the way in.
	b.sendUntilAgentDies(t, m, data, 3)

	// An agent restart: a new connection, the same deterministic id.
	nc2 := connect(t, b.srv)
	var stats Stats
	ref, err := Send(b.ctx, nc2, DefaultPutPrefix, agent, m, bytes.NewReader(data), WithStats(&stats))
	require.NoError(t, err)
	requireSame(t, data, readStored(t, b, ref))
	require.Greater(t, stats.StartOffset, int64(0), "resumed, not restarted")
	require.Less(t, stats.BytesSent, int64(len(data)), "re-sent less than the whole file")
	t.Logf("resumed at %d of %d, sent %d", stats.StartOffset, len(data), stats.BytesSent)
}

func TestResumeAfterReceiverRestart(t *testing.T) {
	t.Parallel()
	b := setup(t)

	data := randomBytes(t, 8<<20)
	m := meta("restart", outRef("restart.bin"), data)
	b.sendUntilAgentDies(t, m, data, 2)

	// The broker restarts: a new Receiver on the same staging dir.
	require.NoError(t, b.receiver.Stop(context.Background()))
	r2, err := NewReceiver(ReceiverConfig{Conn: b.broker, Store: b.store, StagingDir: b.staging})
	require.NoError(t, err)
	r2.signals.Resumed.Init()
	require.NoError(t, r2.Start(b.ctx))
	t.Cleanup(func() { _ = r2.Stop(context.Background()) })

	var stats Stats
	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, m, bytes.NewReader(data), WithStats(&stats))
	require.NoError(t, err)
	requireSame(t, data, readStored(t, b, ref))
	require.Greater(t, stats.StartOffset, int64(0))
	// The first receiver saved its hash state on Stop: the second one
	// resumed from it without reading the staged part again.
	resumed := r2.signals.Resumed.WaitOrTimeout(t)
	require.True(t, resumed.FromHashState, "resumed from the saved hash state")
	require.Equal(t, stats.StartOffset, resumed.Offset)
	r2.signals.Resumed.RequireEmpty(t)
}

func TestCorruptedChunkIsResent(t *testing.T) {
	t.Parallel()
	b := setup(t)

	data := randomBytes(t, 4<<20)
	var corrupted atomic.Int32
	var target atomic.Int64 // the second chunk's offset, whatever the chunk size
	corrupt := func(off int64, chunk []byte) {
		if off > 0 {
			target.CompareAndSwap(0, off)
		}
		if off == target.Load() && corrupted.Add(1) == 1 {
			chunk[100] ^= 0xff // flipped on the wire, after the CRC was computed
		}
	}
	var stats Stats
	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, meta("corrupt", outRef("c.bin"), data), bytes.NewReader(data),
		WithStats(&stats), func(o *options) { o.testCorrupt = corrupt })
	require.NoError(t, err)
	// At least twice: a busy answer during the go-back may send it once more.
	require.GreaterOrEqual(t, corrupted.Load(), int32(2), "the second chunk was sent again")
	require.GreaterOrEqual(t, stats.Resends, int64(1), "the corrupted chunk was sent again")
	requireSame(t, data, readStored(t, b, ref))
}

func TestCorruptedStagingDetectedAtCommit(t *testing.T) {
	t.Parallel()
	b := setup(t)

	data := randomBytes(t, 4<<20)
	m := meta("rot", outRef("rot.bin"), data)
	b.sendUntilAgentDies(t, m, data, 2)

	// The broker crashes (no saved hash state) and the staged data is
	// damaged on disk.
	require.NoError(t, b.receiver.Stop(context.Background()))
	base := filepath.Join(b.staging, agent, m.TransferID)
	require.NoError(t, os.Remove(base+".hash"))
	f, err := os.OpenFile(base+".part", os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0xde, 0xad}, 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	r2, err := NewReceiver(ReceiverConfig{Conn: b.broker, Store: b.store, StagingDir: b.staging})
	require.NoError(t, err)
	r2.signals.Resumed.Init()
	r2.signals.ChecksumMismatch.Init()
	r2.signals.Committed.Init()
	require.NoError(t, r2.Start(b.ctx))
	t.Cleanup(func() { _ = r2.Stop(context.Background()) })

	var stats Stats
	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, m, bytes.NewReader(data), WithStats(&stats))
	require.NoError(t, err, "one full resend after the sha256 mismatch")
	requireSame(t, data, readStored(t, b, ref))
	require.Equal(t, 2, stats.Attempts)
	require.Equal(t, int64(0), stats.StartOffset, "the second attempt started over")
	// Without a hash state the staged part was read again, hashed wrong at
	// commit, and the transfer committed after one full resend.
	resumed := r2.signals.Resumed.WaitOrTimeout(t)
	require.False(t, resumed.FromHashState, "no hash state: the staged data was read again")
	require.Greater(t, resumed.Offset, int64(0))
	mismatch := r2.signals.ChecksumMismatch.WaitOrTimeout(t)
	require.Equal(t, int64(0), mismatch.Offset, "the staged data was dropped")
	committed := r2.signals.Committed.WaitOrTimeout(t)
	require.Equal(t, int64(len(data)), committed.Offset)
	r2.signals.ChecksumMismatch.RequireEmpty(t)
}

func TestTraversalAndAuthorization(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := []byte("x")

	for _, ref := range []filestore.Ref{
		{User: "user007", Kind: filestore.KindOutput, Name: "../../user008/output/x.png"},
		{User: "user007", Kind: filestore.KindOutput, Subfolder: "../../user008", Name: "x.png"},
		{User: "../user008", Kind: filestore.KindOutput, Name: "x.png"},
		{User: "user007", Kind: filestore.KindOutput, Name: ".."},
	} {
		_, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, Meta{TransferID: TransferID("t"), Ref: ref, Size: 1, SHA256: hexSum(data)}, bytes.NewReader(data))
		require.ErrorIs(t, err, filestore.ErrInvalidName, "%v", ref)

		// A hand-made request that skips the client's checks is refused by
		// the receiver.
		req, _ := json.Marshal(OpenRequest{TransferID: TransferID("t"), Ref: ref, Size: 1, SHA256: hexSum(data)})
		msg, err := b.agent.Request(DefaultPutPrefix+"."+agent+".open", req, testutil.WaitTimeout())
		require.NoError(t, err)
		var rep OpenReply
		require.NoError(t, json.Unmarshal(msg.Data, &rep))
		require.ErrorIs(t, rep.Error.err(), filestore.ErrInvalidName)

		_, err = Fetch(b.ctx, b.agent, DefaultGetPrefix, agent, ref, discardAt{}, "")
		require.ErrorIs(t, err, filestore.ErrInvalidName)
		sreq, _ := json.Marshal(StatRequest{Ref: ref})
		msg, err = b.agent.Request(DefaultGetPrefix+"."+agent+".stat", sreq, testutil.WaitTimeout())
		require.NoError(t, err)
		var srep StatReply
		require.NoError(t, json.Unmarshal(msg.Data, &srep))
		require.ErrorIs(t, srep.Error.err(), filestore.ErrInvalidName)
	}

	// By default agents may not write inputs.
	_, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, Meta{TransferID: TransferID("in"),
		Ref: filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: "in.png"}, Size: 1, SHA256: hexSum(data)}, bytes.NewReader(data))
	require.ErrorIs(t, err, ErrForbidden)

	// Nor read outputs.
	_, err = Fetch(b.ctx, b.agent, DefaultGetPrefix, agent, outRef("x.png"), discardAt{}, "")
	require.ErrorIs(t, err, ErrForbidden)

	// A wrong size/sha pair never becomes a stored file.
	_, err = Send(b.ctx, b.agent, DefaultPutPrefix, agent, Meta{TransferID: TransferID("bad"), Ref: outRef("bad.png"), Size: 1, SHA256: hexSum([]byte("y"))}, bytes.NewReader(data))
	require.ErrorIs(t, err, filestore.ErrChecksumMismatch)
	_, err = b.store.Stat(b.ctx, outRef("bad.png"))
	require.ErrorIs(t, err, filestore.ErrNotFound)
}

func TestNoResponders(t *testing.T) {
	t.Parallel()
	s := startNATS(t)
	nc := connect(t, s)
	data := []byte("x")
	_, err := Send(context.Background(), nc, DefaultPutPrefix, agent, meta("nr", outRef("x"), data), bytes.NewReader(data),
		WithRetries(2), WithBackoff(time.Millisecond, 5*time.Millisecond))
	require.ErrorIs(t, err, nats.ErrNoResponders)
}

func TestFetch(t *testing.T) {
	t.Parallel()
	b := setup(t)

	data := randomBytes(t, 5<<20+123)
	in := filestore.Ref{User: "user007", Kind: filestore.KindInput, Subfolder: "refs", Name: "cat.png"}
	w, err := b.store.Create(b.ctx, in)
	require.NoError(t, err)
	_, _ = w.Write(data)
	_, err = w.Commit(b.ctx, hexSum(data))
	require.NoError(t, err)

	dest := filepath.Join(t.TempDir(), "scratch", "user007", "cat.png")
	info, err := FetchFile(b.ctx, b.agent, DefaultGetPrefix, agent, in, dest, hexSum(data))
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), info.Size)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	requireSame(t, data, got)

	// Into any WriterAt.
	f, err := os.Create(filepath.Join(t.TempDir(), "x"))
	require.NoError(t, err)
	defer f.Close()
	_, err = Fetch(b.ctx, b.agent, DefaultGetPrefix, agent, in, f, "")
	require.NoError(t, err)
	got, err = os.ReadFile(f.Name())
	require.NoError(t, err)
	requireSame(t, data, got)

	// Resume: an interrupted earlier fetch left the first 2 MiB.
	dest2 := filepath.Join(t.TempDir(), "cat.png")
	require.NoError(t, os.WriteFile(dest2+"."+hexSum(data)[:16]+".part", data[:2<<20], 0o600))
	var stats Stats
	_, err = FetchFile(b.ctx, b.agent, DefaultGetPrefix, agent, in, dest2, hexSum(data), WithStats(&stats))
	require.NoError(t, err)
	require.Equal(t, int64(2<<20), stats.StartOffset)
	require.Equal(t, int64(len(data)-2<<20), stats.BytesSent)
	got, err = os.ReadFile(dest2)
	require.NoError(t, err)
	requireSame(t, data, got)

	// A corrupted chunk is fetched again.
	var once sync.Once
	stats = Stats{}
	dest3 := filepath.Join(t.TempDir(), "cat3.png")
	_, err = FetchFile(b.ctx, b.agent, DefaultGetPrefix, agent, in, dest3, hexSum(data), WithStats(&stats),
		func(o *options) {
			o.testCorrupt = func(off int64, chunk []byte) {
				if off > 0 { // the second chunk, whatever the chunk size
					once.Do(func() { chunk[0] ^= 1 })
				}
			}
		})
	require.NoError(t, err)
	require.Equal(t, int64(1), stats.Resends)

	// The wrong expected sum fails before transferring anything.
	_, err = FetchFile(b.ctx, b.agent, DefaultGetPrefix, agent, in, filepath.Join(t.TempDir(), "y"), hexSum([]byte("other")))
	require.ErrorIs(t, err, filestore.ErrChecksumMismatch)

	_, err = Fetch(b.ctx, b.agent, DefaultGetPrefix, agent, filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: "missing.png"}, f, "")
	require.ErrorIs(t, err, filestore.ErrNotFound)
}

// TestMemoryBounded checks that a 256 MiB upload, and the download of the
// same file, do not grow the heap anywhere near the file size (it runs
// alone: not parallel).
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB transfer")
	}
	b := setup(t)

	const size = 256 << 20
	path := filepath.Join(t.TempDir(), "big.bin")
	f, err := os.Create(path)
	require.NoError(t, err)
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for written := 0; written < size; written += len(buf) {
		_, _ = rand.Read(buf)
		_, _ = f.Write(buf)
		h.Write(buf)
	}
	require.NoError(t, f.Close())
	sum := hex.EncodeToString(h.Sum(nil))
	buf = nil

	var ref filestore.Ref
	growth := heapGrowth(func() {
		ref, err = SendFile(b.ctx, b.agent, DefaultPutPrefix, agent, Meta{TransferID: TransferID("big"), Ref: outRef("big.bin"), Size: size, SHA256: sum}, path)
	})
	require.NoError(t, err)
	info, err := b.store.Stat(b.ctx, ref)
	require.NoError(t, err)
	require.Equal(t, sum, info.SHA256)
	t.Logf("upload: heap growth %d MiB for a %d MiB file", growth>>20, size>>20)
	require.Less(t, growth, int64(64<<20), "heap growth must stay far below the file size")

	// The same file downloaded as an input.
	in := filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: "big.mp4"}
	w, err := b.store.Create(b.ctx, in)
	require.NoError(t, err)
	src, err := os.Open(path)
	require.NoError(t, err)
	_, err = io.Copy(w, src)
	src.Close()
	require.NoError(t, err)
	_, err = w.Commit(b.ctx, sum)
	require.NoError(t, err)
	dest := filepath.Join(t.TempDir(), "inputs", "big.mp4")
	growth = heapGrowth(func() { _, err = FetchFile(b.ctx, b.agent, DefaultGetPrefix, agent, in, dest, sum) })
	require.NoError(t, err)
	t.Logf("download: heap growth %d MiB for a %d MiB file", growth>>20, size>>20)
	require.Less(t, growth, int64(64<<20), "heap growth must stay far below the file size")
}

// heapGrowth runs fn and returns how far the heap in use rose above what it
// was before, sampled every 20 ms.
func heapGrowth(fn func()) int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse

	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	fn()
	close(stop)
	<-sampled
	return int64(peak.Load()) - int64(base)
}

func TestReceiverConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := NewReceiver(ReceiverConfig{})
	require.Error(t, err)
	s := startNATS(t)
	nc := connect(t, s)
	_, err = NewReceiver(ReceiverConfig{Conn: nc, Store: diskstore.New(datalayout.New(t.TempDir()))})
	require.Error(t, err, "StagingDir required")
	_, err = NewReceiver(ReceiverConfig{Conn: nc, Store: diskstore.New(datalayout.New(t.TempDir())), StagingDir: t.TempDir(), SubjectPrefix: "file.>"})
	require.Error(t, err)
	_, err = NewServer(ServerConfig{Conn: nc})
	require.Error(t, err)
}

func TestRemoteErrorMapping(t *testing.T) {
	t.Parallel()
	for _, sentinel := range []error{filestore.ErrInvalidName, filestore.ErrNotFound, ErrForbidden, filestore.ErrChecksumMismatch,
		ErrChunkChecksum, ErrOffsetMismatch, ErrUnknownTransfer, ErrBusy, ErrBadRequest} {
		w := toWire(errors.Join(errors.New("context"), sentinel))
		require.ErrorIs(t, w.err(), sentinel)
	}
	require.ErrorIs(t, toWire(errors.New("disk on fire at /srv/data")).err(), ErrRemote)
	require.NotContains(t, toWire(errors.New("disk on fire at /srv/data")).Message, "/srv")
}

// discardAt is an io.WriterAt that drops everything.
type discardAt struct{}

func (discardAt) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

// requireSame compares contents by size and sha256, so a failure does not
// print megabytes.
func requireSame(t testing.TB, want, got []byte) {
	t.Helper()
	require.Equal(t, len(want), len(got), "size")
	require.Equal(t, hexSum(want), hexSum(got), "sha256")
}

// Committed transfers do not count against MaxTransfers: a long workshop
// ships far more files than the receiver holds open at once.
func TestCommittedTransfersMakeRoom(t *testing.T) {
	t.Parallel()
	b := setupWithSignals(t, func(s *receiverSignals) { s.Closed.Init() },
		func(c *ReceiverConfig) { c.MaxTransfers = 2 })
	for i := range 5 {
		data := []byte(fmt.Sprintf("file %d", i))
		name := fmt.Sprintf("f%d.png", i)
		ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, meta(name, outRef(name), data), bytes.NewReader(data))
		require.NoError(t, err, "file %d", i)
		requireSame(t, data, readStored(t, b, ref))
	}
	// The third open evicted the first two (committed) transfers, the
	// fifth the next two.
	evicted := map[string]bool{}
	for range 4 {
		evicted[b.receiver.signals.Closed.WaitOrTimeout(t).TransferID] = true
	}
	for i := range 4 {
		require.True(t, evicted[TransferID(fmt.Sprintf("f%d.png", i))], "file %d's transfer evicted", i)
	}
	b.receiver.signals.Closed.RequireEmpty(t)
}

// putRequest sends a hand-made request on the upload subject verb and
// decodes the reply.
func (b *testBundle) putRequest(t *testing.T, verb string, req, reply any) {
	t.Helper()
	body, err := json.Marshal(req)
	require.NoError(t, err)
	m, err := b.agent.Request(DefaultPutPrefix+"."+agent+"."+verb, body, testutil.WaitTimeout())
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(m.Data, reply))
}

// putChunk sends data as the chunk at off of transfer id.
func (b *testBundle) putChunk(t *testing.T, id string, off int64, data []byte) ChunkReply {
	t.Helper()
	msg := nats.NewMsg(DefaultPutPrefix + "." + agent + ".chunk")
	msg.Header.Set(HeaderTransfer, id)
	msg.Header.Set(HeaderOffset, strconv.FormatInt(off, 10))
	msg.Header.Set(HeaderCRC32C, strconv.FormatUint(uint64(crc32c(data)), 16))
	msg.Header.Set(HeaderGen, "1")
	msg.Data = data
	rep, err := b.agent.RequestMsg(msg, testutil.WaitTimeout())
	require.NoError(t, err)
	var cr ChunkReply
	require.NoError(t, json.Unmarshal(rep.Data, &cr))
	return cr
}

// An abort drops the staged data and the transfer: a later open starts
// from 0.
func TestAbortDropsStagedData(t *testing.T) {
	t.Parallel()
	b := setupWithSignals(t, func(s *receiverSignals) {
		s.ChunkReceived.Init()
		s.Aborted.Init()
		s.Closed.Init()
	})
	data := randomBytes(t, 64<<10)
	id := TransferID("aborted")
	var open OpenReply
	b.putRequest(t, "open", OpenRequest{TransferID: id, Ref: outRef("a.bin"), Size: 2 * int64(len(data)), SHA256: hexSum(data)}, &open)
	require.Nil(t, open.Error)
	require.Nil(t, b.putChunk(t, id, 0, data).Error)
	require.Equal(t, int64(len(data)), b.receiver.signals.ChunkReceived.WaitOrTimeout(t).Offset)

	var done CommitReply
	b.putRequest(t, "abort", TransferRequest{TransferID: id}, &done)
	require.Nil(t, done.Error)
	aborted := b.receiver.signals.Aborted.WaitOrTimeout(t)
	require.Equal(t, id, aborted.TransferID)
	require.Equal(t, id, b.receiver.signals.Closed.WaitOrTimeout(t).TransferID, "the worker ended")
	for _, ext := range []string{".part", ".meta", ".hash"} {
		require.NoFileExists(t, filepath.Join(b.staging, agent, id+ext))
	}

	open = OpenReply{}
	b.putRequest(t, "open", OpenRequest{TransferID: id, Ref: outRef("a.bin"), Size: 2 * int64(len(data)), SHA256: hexSum(data)}, &open)
	require.Nil(t, open.Error)
	require.Equal(t, int64(0), open.Offset, "nothing staged after the abort")
}

// An idle transfer is closed (its hash state saved) and a later open
// resumes it from where it was.
func TestIdleTransferClosedAndResumed(t *testing.T) {
	t.Parallel()
	b := setupWithSignals(t, func(s *receiverSignals) {
		s.Closed.Init()
		s.Resumed.Init()
	}, func(c *ReceiverConfig) { c.IdleTimeout = time.Millisecond })
	data := randomBytes(t, 64<<10)
	id := TransferID("idle")
	req := OpenRequest{TransferID: id, Ref: outRef("idle.bin"), Size: 2 * int64(len(data))}
	var open OpenReply
	for {
		open = OpenReply{}
		b.putRequest(t, "open", req, &open)
		require.Nil(t, open.Error)
		cr := b.putChunk(t, id, 0, data)
		if cr.Error == nil {
			break
		}
		// Idle for a millisecond already: closed before the chunk came.
		require.ErrorIs(t, cr.Error.err(), ErrUnknownTransfer)
	}
	staged := func(s transferSignal) bool { return s.Offset == int64(len(data)) }
	b.receiver.signals.Closed.WaitFor(t, "the idle transfer closed with the chunk staged", staged)

	open = OpenReply{}
	b.putRequest(t, "open", req, &open)
	require.Nil(t, open.Error)
	require.Equal(t, int64(len(data)), open.Offset)
	resumed := b.receiver.signals.Resumed.WaitFor(t, "the resume after the chunk",
		func(s resumeSignal) bool { return staged(s.transferSignal) })
	require.True(t, resumed.FromHashState, "the idle close saved the hash state")
}
