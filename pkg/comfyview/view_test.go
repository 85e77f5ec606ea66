package comfyview

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfyview/webpenc"
)

// testImage is a small RGBA image with a transparent corner.
func testImage() *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, 64, 48))
	for y := 0; y < 48; y++ {
		for x := 0; x < 64; x++ {
			a := uint8(255)
			if x < 8 && y < 8 {
				a = 0
			}
			img.SetNRGBA(x, y, color.NRGBA{R: uint8(x * 4), G: uint8(y * 5), B: 128, A: a})
		}
	}
	return img
}

func encodePNG(t *testing.T, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	return buf.Bytes()
}

func apply(t *testing.T, tr Transform, src []byte) (image.Image, string, string) {
	t.Helper()
	body, ct, err := tr.Apply(bytes.NewReader(src), webpenc.Encoder{})
	require.NoError(t, err)
	img, format, err := image.Decode(bytes.NewReader(body))
	require.NoError(t, err, "the body decodes as %s", ct)
	return img, format, ct
}

// TestApplyPreview checks ?preview= the way ComfyUI's server.py answers it
// with PIL: webp by default and for unknown formats or an alpha channel,
// with the alpha kept; jpeg without alpha; the quality after ';'.
func TestApplyPreview(t *testing.T) {
	t.Parallel()
	src := encodePNG(t, testImage())
	for _, tc := range []struct {
		name, preview, channel string
		hasChannel             bool
		format, ct             string
		alpha                  bool
	}{
		{name: "webp", preview: "webp", format: "webp", ct: "image/webp", alpha: true},
		{name: "webp with quality", preview: "webp;50", format: "webp", ct: "image/webp", alpha: true},
		{name: "jpeg", preview: "jpeg;50", format: "jpeg", ct: "image/jpeg"},
		{name: "unknown format is webp", preview: "png", format: "webp", ct: "image/webp", alpha: true},
		{name: "alpha forces webp", preview: "jpeg", channel: "a", hasChannel: true, format: "webp", ct: "image/webp", alpha: true},
		{name: "webp rgb drops alpha", preview: "webp", channel: "rgb", hasChannel: true, format: "webp", ct: "image/webp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img, format, ct := apply(t, Transform{Preview: tc.preview, HasPreview: true, Channel: tc.channel, HasChannel: tc.hasChannel}, src)
			require.Equal(t, tc.ct, ct)
			require.Equal(t, tc.format, format)
			require.Equal(t, image.Rect(0, 0, 64, 48), img.Bounds())
			_, _, _, a := img.At(1, 1).RGBA()
			if tc.alpha {
				require.Zero(t, a, "the transparent corner stays transparent")
			} else {
				require.Equal(t, uint32(0xffff), a, "no alpha")
			}
		})
	}

	// A WebP source (what participants may upload) is read too.
	webpSrc, _, err := Transform{Preview: "webp", HasPreview: true}.Apply(bytes.NewReader(src), webpenc.Encoder{})
	require.NoError(t, err)
	img, format, ct := apply(t, Transform{Preview: "jpeg", HasPreview: true}, webpSrc)
	require.Equal(t, "image/jpeg", ct)
	require.Equal(t, "jpeg", format)
	require.Equal(t, image.Rect(0, 0, 64, 48), img.Bounds())

	// The quality is used: a lower one gives a smaller file.
	hi, _, err := Transform{Preview: "webp;95", HasPreview: true}.Apply(bytes.NewReader(src), webpenc.Encoder{})
	require.NoError(t, err)
	lo, _, err := Transform{Preview: "webp;5", HasPreview: true}.Apply(bytes.NewReader(src), webpenc.Encoder{})
	require.NoError(t, err)
	require.Less(t, len(lo), len(hi))
}

func TestApplyChannels(t *testing.T) {
	t.Parallel()
	src := encodePNG(t, testImage())
	img, format, ct := apply(t, Transform{Channel: "rgb", HasChannel: true}, src)
	require.Equal(t, "image/png", ct)
	require.Equal(t, "png", format)
	r, _, _, a := img.At(1, 1).RGBA()
	require.Equal(t, uint32(0xffff), a)
	require.Equal(t, uint32(4*0x101), r, "colour kept under the transparent corner")

	img, _, ct = apply(t, Transform{Channel: "a", HasChannel: true}, src)
	require.Equal(t, "image/png", ct)
	r, g, b, a := img.At(1, 1).RGBA()
	require.Equal(t, []uint32{0, 0, 0, 0}, []uint32{r, g, b, a}, "alpha of the source, black RGB")
	_, _, _, a = img.At(20, 20).RGBA()
	require.Equal(t, uint32(0xffff), a)
}

// pngClaiming is a valid PNG signature and IHDR claiming w×h RGBA pixels,
// followed by a tiny IDAT and IEND: a few dozen bytes that would decode to
// w×h×4 bytes.
func pngClaiming(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		_ = binary.Write(&b, binary.BigEndian, uint32(len(data)))
		b.WriteString(typ)
		b.Write(data)
		crc := crc32.NewIEEE()
		crc.Write([]byte(typ))
		crc.Write(data)
		_ = binary.Write(&b, binary.BigEndian, crc.Sum32())
	}
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 6, 0, 0, 0) // 8-bit RGBA, no interlace
	chunk("IHDR", ihdr)
	chunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})
	chunk("IEND", nil)
	return b.Bytes()
}

// withDimensions re-encodes a small JPEG or GIF with its header patched to
// claim w×h pixels.
func jpegClaiming(t *testing.T, w, h uint16) []byte {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, jpeg.Encode(&buf, testImage(), nil))
	b := buf.Bytes()
	i := bytes.Index(b, []byte{0xff, 0xc0}) // SOF0: length, precision, height, width
	require.Positive(t, i)
	binary.BigEndian.PutUint16(b[i+5:], h)
	binary.BigEndian.PutUint16(b[i+7:], w)
	return b
}

func gifClaiming(t *testing.T, w, h uint16) []byte {
	t.Helper()
	var buf bytes.Buffer
	pal := image.NewPaletted(image.Rect(0, 0, 4, 4), color.Palette{color.Black, color.White})
	require.NoError(t, gif.Encode(&buf, pal, nil))
	b := buf.Bytes()
	binary.LittleEndian.PutUint16(b[6:], w) // logical screen
	binary.LittleEndian.PutUint16(b[8:], h)
	return b
}

// TestApplyRefusesDecompressionBombs: files of a few bytes that claim
// gigapixel images are refused from their header, before the decoder
// allocates the pixels.
//
// Not parallel: it measures this goroutine's allocations with the
// process-wide counter.
func TestApplyRefusesDecompressionBombs(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"png 100000x100000", pngClaiming(100000, 100000)},
		{"png just over the limit", pngClaiming(8193, 8192)},
		{"jpeg 65000x65000", jpegClaiming(t, 65000, 65000)},
		{"gif 65000x65000", gifClaiming(t, 65000, 65000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, tr := range []Transform{
				{Preview: "webp", HasPreview: true},
				{Preview: "jpeg;50", HasPreview: true},
				{Channel: "a", HasChannel: true},
			} {
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				_, _, err := tr.Apply(bytes.NewReader(tc.data), webpenc.Encoder{})
				runtime.ReadMemStats(&after)
				require.ErrorIs(t, err, ErrTooLarge)
				require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(16<<20), "refused before allocating the pixels")
			}
		})
	}

	// An image within the limit is still decoded (the header bytes read
	// for the check are replayed to the decoder).
	_, ct, err := Transform{Preview: "jpeg", HasPreview: true}.Apply(bytes.NewReader(encodePNG(t, testImage())), webpenc.Encoder{})
	require.NoError(t, err)
	require.Equal(t, "image/jpeg", ct)
}

// Without an encoder a WebP answer is ErrNoWebP; JPEG and PNG need none.
func TestApplyWithoutWebPEncoder(t *testing.T) {
	src := encodePNG(t, testImage())
	_, _, err := Transform{Preview: "webp", HasPreview: true}.Apply(bytes.NewReader(src), nil)
	require.ErrorIs(t, err, ErrNoWebP)
	_, ct, err := Transform{Preview: "jpeg", HasPreview: true}.Apply(bytes.NewReader(src), nil)
	require.NoError(t, err)
	require.Equal(t, "image/jpeg", ct)
	_, ct, err = Transform{Channel: "a", HasChannel: true}.Apply(bytes.NewReader(src), nil)
	require.NoError(t, err)
	require.Equal(t, "image/png", ct)
}
