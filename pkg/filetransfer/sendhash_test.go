package filetransfer

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// countingReader counts the bytes read from it.
type countingReader struct {
	r    *bytes.Reader
	read atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.read.Add(int64(n))
	return n, err
}

// unhashed is meta without the sha256: Send computes it while sending.
func unhashed(id string, ref filestore.Ref, data []byte) Meta {
	m := meta(id, ref, data)
	m.SHA256 = ""
	return m
}

// TestSendHashesWhileSending: an upload whose sha256 is not given is hashed
// from the chunks as they are read for sending, so the file is read once
// (not a hashing pass and then a sending one); the receiver checks the sum
// the commit brings, and the stored file has it.
func TestSendHashesWhileSending(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := randomBytes(t, 24<<20+777)
	src := &countingReader{r: bytes.NewReader(data)}
	var stats Stats
	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, unhashed("while", outRef("while.mp4"), data), src, WithStats(&stats))
	require.NoError(t, err)
	requireSame(t, data, readStored(t, b, ref))
	require.Equal(t, hexSum(data), stats.SHA256)
	info, err := b.store.Stat(b.ctx, ref)
	require.NoError(t, err)
	require.Equal(t, hexSum(data), info.SHA256)
	require.Equal(t, int64(len(data)), src.read.Load(), "the file was read once")

	// SendFile without a sum does the same.
	path := filepath.Join(t.TempDir(), "file.mp4")
	require.NoError(t, os.WriteFile(path, data, 0o600))
	stats = Stats{}
	ref, err = SendFile(b.ctx, b.agent, DefaultPutPrefix, agent, Meta{TransferID: TransferID("sendfile"), Ref: outRef("file.mp4")}, path, WithStats(&stats))
	require.NoError(t, err)
	require.Equal(t, hexSum(data), stats.SHA256)
	requireSame(t, data, readStored(t, b, ref))
}

// TestSendFileShorterThanItsSize: a file shorter than the size the upload
// was opened with (truncated while it ships) fails the Send, with or without
// a known sum, and nothing is stored: a sum computed while sending must not
// vouch for stale buffer bytes.
func TestSendFileShorterThanItsSize(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := randomBytes(t, 3<<20+5)
	for _, m := range []Meta{unhashed("short", outRef("short.mp4"), data), meta("short-known", outRef("short-known.mp4"), data)} {
		m.Size += 1 << 20
		_, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, m, bytes.NewReader(data))
		require.ErrorIs(t, err, io.ErrUnexpectedEOF)
		_, err = b.store.Stat(b.ctx, m.Ref)
		require.ErrorIs(t, err, filestore.ErrNotFound)
	}
}

// TestSendHashesWhileSendingThroughGoBacks: corrupted chunks (sent again
// after a go-back) and a dropped connection (resumed from the receiver's
// offset) do not hash any byte twice or skip one.
func TestSendHashesWhileSendingThroughGoBacks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := randomBytes(t, 32<<20)
	nc := reconnecting(t, b.srv.ClientURL())
	var kick sync.Once
	var corrupted atomic.Int64
	var stats Stats
	ref, err := Send(b.ctx, nc, DefaultPutPrefix, agent, unhashed("goback", outRef("goback.mp4"), data), bytes.NewReader(data),
		WithStats(&stats), corruptOnce(afterReconnect(nc, int64(len(data))/2), &corrupted),
		WithProgress(func(done, total int64) {
			if done >= total/4 {
				kick.Do(func() {
					cid, err := nc.GetClientID()
					require.NoError(t, err)
					require.NoError(t, b.srv.DisconnectClientByID(cid))
				})
			}
		}))
	require.NoError(t, err)
	require.GreaterOrEqual(t, stats.Reconnects, 1)
	require.Greater(t, corrupted.Load(), int64(0), "a chunk was corrupted after the reconnection")
	require.GreaterOrEqual(t, stats.Resends, int64(1), "and sent again")
	require.Equal(t, hexSum(data), stats.SHA256)
	requireSame(t, data, readStored(t, b, ref))
}

// TestSendHashesWhileSendingResumes: a later Send (an agent restart) of an
// upload the receiver has half of reads the half it will not send to hash
// it, then sends the rest.
func TestSendHashesWhileSendingResumes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := randomBytes(t, 16<<20)
	m := unhashed("resume-unhashed", outRef("resume.mp4"), data)
	b.sendUntilAgentDies(t, m, data, 2)

	src := &countingReader{r: bytes.NewReader(data)}
	var stats Stats
	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, m, src, WithStats(&stats))
	require.NoError(t, err)
	require.GreaterOrEqual(t, stats.StartOffset, int64(len(data)/2), "resumed")
	require.Equal(t, int64(len(data)), src.read.Load(), "the staged half read once for the hash, the rest once to send")
	require.Equal(t, hexSum(data), stats.SHA256)
	requireSame(t, data, readStored(t, b, ref))
}

// TestCommitChecksTheSendersSum: the receiver compares what it received
// with the sum a commit brings, and refuses a commit whose sum contradicts
// the open's.
func TestCommitChecksTheSendersSum(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := randomBytes(t, 512<<10)
	request := func(verb string, req, reply any) {
		t.Helper()
		b.putRequest(t, verb, req, reply)
	}
	sendAll := func(id string) {
		t.Helper()
		cr := b.putChunk(t, id, 0, data)
		require.Nil(t, cr.Error)
		require.Equal(t, int64(len(data)), cr.Offset)
	}

	// Opened without a sum, committed with a wrong one: refused, nothing
	// stored, and the staged data is dropped (the sender starts over).
	id := TransferID("wrong-sum")
	var open OpenReply
	request("open", OpenRequest{TransferID: id, Ref: outRef("w.bin"), Size: int64(len(data))}, &open)
	require.Nil(t, open.Error)
	sendAll(id)
	var done CommitReply
	request("commit", TransferRequest{TransferID: id, SHA256: hexSum([]byte("other"))}, &done)
	require.ErrorIs(t, done.Error.err(), filestore.ErrChecksumMismatch)
	_, err := b.store.Stat(b.ctx, outRef("w.bin"))
	require.ErrorIs(t, err, filestore.ErrNotFound)
	// Without any sum: a bad request.
	sendAll(id)
	done = CommitReply{}
	request("commit", TransferRequest{TransferID: id}, &done)
	require.ErrorIs(t, done.Error.err(), ErrBadRequest)
	// With the right one: stored.
	done = CommitReply{}
	request("commit", TransferRequest{TransferID: id, SHA256: hexSum(data)}, &done)
	require.Nil(t, done.Error)
	require.Equal(t, hexSum(data), done.SHA256)

	// Opened with a sum, committed with another: a bad request.
	id = TransferID("two-sums")
	open = OpenReply{}
	request("open", OpenRequest{TransferID: id, Ref: outRef("t.bin"), Size: int64(len(data)), SHA256: hexSum(data)}, &open)
	require.Nil(t, open.Error)
	sendAll(id)
	done = CommitReply{}
	request("commit", TransferRequest{TransferID: id, SHA256: hexSum([]byte("other"))}, &done)
	require.ErrorIs(t, done.Error.err(), ErrBadRequest)
	done = CommitReply{}
	request("commit", TransferRequest{TransferID: id}, &done)
	require.Nil(t, done.Error)
}

// TestRerunWithOtherBytesStartsOver: an agent restarted mid-upload re-runs
// the job, and the re-run's output has the size of the first but other
// bytes (a sampler that is not deterministic). Its upload, under the same
// transfer id and without a sum, resumes from the staged part of the
// first; the commit's sha256 check catches the stitched halves, the staged
// data is dropped, the whole second file is sent again, and what is stored
// is the second file, never a mix of the two.
func TestRerunWithOtherBytesStartsOver(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := randomBytes(t, 16<<20)
	second := randomBytes(t, len(first))
	m := unhashed("rerun-other", outRef("LTX_00001_.mp4"), first)
	b.sendUntilAgentDies(t, m, first, 2)

	m.Ref = outRef("LTX_00002_.mp4")
	var stats Stats
	ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, m, bytes.NewReader(second), WithStats(&stats))
	require.NoError(t, err)
	require.Equal(t, m.Ref, ref)
	requireSame(t, second, readStored(t, b, ref))
	require.Equal(t, hexSum(second), stats.SHA256)
	require.Equal(t, 2, stats.Attempts, "the resumed attempt was refused at commit, the next sent it all")
	require.Zero(t, stats.StartOffset, "the last attempt started from the first byte")
	require.GreaterOrEqual(t, stats.BytesSent, int64(len(second)), "the whole file after the refusal")
}
