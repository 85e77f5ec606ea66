package filetransfer

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestStagingWrites: chunks are staged with direct I/O where the file
// system supports it, and through the page cache otherwise (on request,
// for chunks not aligned to the block size, and for a file's odd-sized
// last chunk); the stored file is right either way.
func TestStagingWrites(t *testing.T) {
	t.Parallel()
	probe := filepath.Join(t.TempDir(), "probe")
	require.NoError(t, os.WriteFile(probe, nil, 0o600))
	directHere := false
	if f := openDirect(probe); f != nil {
		directHere = true
		f.Close()
	}
	for _, tc := range []struct {
		name       string
		buffered   bool
		chunk      int // sender's chunk size; 0: the default
		wantDirect bool
	}{
		{name: "direct", wantDirect: directHere},
		{name: "buffered", buffered: true},
		{name: "unaligned chunks", chunk: 1_000_003, wantDirect: directHere},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(c *ReceiverConfig) { c.BufferedStaging = tc.buffered })
			data := randomBytes(t, 9<<20+1234)
			m := meta("staging-"+tc.name, outRef(tc.name+".mp4"), data)
			opts := []Option{}
			if tc.chunk > 0 {
				opts = append(opts, WithChunkSize(tc.chunk))
			}
			var once sync.Once
			var direct bool
			opts = append(opts, WithProgress(func(int64, int64) {
				once.Do(func() {
					b.receiver.mu.Lock()
					defer b.receiver.mu.Unlock()
					tr := b.receiver.transfers[b.receiver.key(agent, m.TransferID)]
					require.NotNil(t, tr)
					direct = tr.direct != nil
				})
			}))
			ref, err := Send(b.ctx, b.agent, DefaultPutPrefix, agent, m, bytes.NewReader(data), opts...)
			require.NoError(t, err)
			requireSame(t, data, readStored(t, b, ref))
			require.Equal(t, tc.wantDirect, direct, "direct descriptor open (file system supports O_DIRECT: %v)", directHere)
		})
	}
}
