package filetransfer

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/filestore"
)

const benchSize = 64 << 20

// BenchmarkTransfer uploads a 64 MiB file agent → broker through an
// in-process NATS server over loopback TCP, staging to disk and committing
// into the Disk store (sha256 verified), and reports MB/s.
func BenchmarkTransfer(b *testing.B) {
	for _, window := range []int{4, 8, 16} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			tb := setup(b, func(c *ReceiverConfig) { c.Window = window })
			data := randomBytes(b, benchSize)
			sum := hexSum(data)
			b.SetBytes(benchSize)
			b.ResetTimer()
			for i := range b.N {
				ref := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Name: fmt.Sprintf("bench-%d.bin", i)}
				_, err := Send(tb.ctx, tb.agent, DefaultPutPrefix, agent,
					Meta{TransferID: TransferID("bench", ref.Name), Ref: ref, Size: benchSize, SHA256: sum},
					bytes.NewReader(data), WithWindow(window))
				require.NoError(b, err)
				// Keep the disk (or tmpfs) from filling up across iterations.
				b.StopTimer()
				require.NoError(b, tb.store.Remove(tb.ctx, ref))
				b.StartTimer()
			}
		})
	}
}

// BenchmarkFetch downloads a 64 MiB input broker → agent into a file.
func BenchmarkFetch(b *testing.B) {
	tb := setup(b)
	data := randomBytes(b, benchSize)
	in := filestore.Ref{User: "user007", Kind: filestore.KindInput, Name: "in.bin"}
	w, err := tb.store.Create(tb.ctx, in)
	require.NoError(b, err)
	_, _ = w.Write(data)
	_, err = w.Commit(tb.ctx, hexSum(data))
	require.NoError(b, err)
	dir := b.TempDir()
	sum := hexSum(data) // the job's manifest has it
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := range b.N {
		dest := filepath.Join(dir, fmt.Sprintf("in-%d.bin", i))
		_, err := FetchFile(tb.ctx, tb.agent, DefaultGetPrefix, agent, in, dest, sum, WithWindow(8))
		require.NoError(b, err)
		_ = os.Remove(dest)
	}
}

// BenchmarkLoopbackTCP is the baseline: a plain 64 MiB copy over a loopback
// TCP connection, no hashing, no disk.
func BenchmarkLoopbackTCP(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	data := randomBytes(b, benchSize)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for range b.N {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(b, err)
		_, err = io.Copy(c, bytes.NewReader(data))
		require.NoError(b, err)
		c.Close()
	}
}
