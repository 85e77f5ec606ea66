package agent

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/pngtext"
)

// testPNG is a small PNG with the given tEXt chunks after IHDR and, in
// afterIDAT, after its image data (where SaveAnimatedPNG puts some).
func testPNG(t *testing.T, before, afterIDAT [][2]string) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, 7, 5))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 37)
	}
	img.Set(0, 0, color.NRGBA{1, 2, 3, 255})
	var enc bytes.Buffer
	require.NoError(t, png.Encode(&enc, img))
	data := enc.Bytes()
	const ihdrEnd = 8 + 12 + 13
	iend := len(data) - 12
	var out bytes.Buffer
	out.Write(data[:ihdrEnd])
	for _, c := range before {
		out.Write(pngtext.Chunk(c[0], []byte(c[1])))
	}
	out.Write(data[ihdrEnd:iend])
	for _, c := range afterIDAT {
		out.Write(pngtext.Chunk(c[0], []byte(c[1])))
	}
	out.Write(data[iend:])
	return out.Bytes()
}

func readAll(t *testing.T, r io.ReaderAt, n int64) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r, 0, n))
	require.NoError(t, err)
	return b
}

func TestRewritePNGPromptReplacesOnlyThePrompt(t *testing.T) {
	t.Parallel()
	orig := testPNG(t,
		[][2]string{{"prompt", `{"5": {"inputs": {"filename_prefix": "user001/t"}}}`}, {"workflow", `{"nodes": []}`}},
		[][2]string{{"prompt", `{"again": 1}`}, {"prompts", "not the prompt"}})
	own := []byte(`{"5": {"inputs": {"filename_prefix": "t"}}}`)
	r, n, err := rewritePNGPrompt(bytes.NewReader(orig), int64(len(orig)), own)
	require.NoError(t, err)
	got := readAll(t, r, n)
	require.Len(t, got, int(n))
	want := testPNG(t,
		[][2]string{{"prompt", string(own)}, {"workflow", `{"nodes": []}`}},
		[][2]string{{"prompt", string(own)}, {"prompts", "not the prompt"}})
	require.Equal(t, want, got)
	_, err = png.Decode(bytes.NewReader(got))
	require.NoError(t, err, "CRCs recomputed")
	// Every CRC is right, not only those the decoder checks.
	for p := 8; p < len(got); {
		l := int(binary.BigEndian.Uint32(got[p:]))
		require.Equal(t, crc32.ChecksumIEEE(got[p+4:p+8+l]), binary.BigEndian.Uint32(got[p+8+l:]))
		p += 12 + l
	}

	// Reads at any offset and length agree with the whole.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		off := rng.IntN(len(got) + 3)
		buf := make([]byte, rng.IntN(len(got)/2+1))
		m, err := r.ReadAt(buf, int64(off))
		end := min(off+len(buf), len(got))
		if off >= len(got) {
			require.Zero(t, m)
			require.ErrorIs(t, err, io.EOF)
			continue
		}
		require.Equal(t, end-off, m)
		if off+len(buf) > len(got) {
			require.ErrorIs(t, err, io.EOF)
		} else {
			require.NoError(t, err)
		}
		require.Equal(t, got[off:end], buf[:m])
	}
}

func TestRewritePNGPromptLeavesOthersAlone(t *testing.T) {
	t.Parallel()
	own := []byte(`{}`)
	withPrompt := testPNG(t, [][2]string{{"prompt", "{}"}}, nil)
	for name, data := range map[string][]byte{
		"no prompt chunk": testPNG(t, [][2]string{{"workflow", "{}"}}, nil),
		"not a PNG":       []byte("RIFF\x00\x00\x00\x00WEBPVP8 "),
		"empty":           nil,
		"truncated":       withPrompt[:len(withPrompt)-5],
		"chunk overruns":  append(append([]byte{}, withPrompt[:8]...), 0x7f, 0xff, 0xff, 0xff, 'I', 'H', 'D', 'R'),
	} {
		_, _, err := rewritePNGPrompt(bytes.NewReader(data), int64(len(data)), own)
		require.ErrorIs(t, err, errNotRewritable, name)
	}
}
