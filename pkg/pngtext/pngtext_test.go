package pngtext

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/png"
	"testing"
)

func TestChunkLayout(t *testing.T) {
	c := Chunk("prompt", []byte("{}"))
	// length 9 ("prompt" NUL "{}"), type, payload, CRC-32 of type+payload
	// (computed by zlib.crc32(b"tEXtprompt\x00{}")).
	want := []byte("\x00\x00\x00\x09tEXtprompt\x00{}")
	if !bytes.Equal(c[:len(want)], want) || len(c) != len(want)+4 {
		t.Fatalf("chunk %q", c)
	}
	if got := c[len(want):]; !bytes.Equal(got, []byte{0xc8, 0x94, 0x86, 0xfb}) {
		t.Errorf("CRC %x", got)
	}
}

func TestInsertAfterIHDRKeepsAValidPNG(t *testing.T) {
	img := image.NewNRGBA(image.Rect(0, 0, 3, 2))
	img.Set(1, 1, color.NRGBA{R: 200, A: 255})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	out, err := InsertAfterIHDR(buf.Bytes(), Text{"prompt", []byte(`{"1": {}}`)}, Text{"workflow", []byte("{}")})
	if err != nil {
		t.Fatal(err)
	}
	first := Chunk("prompt", []byte(`{"1": {}}`))
	if !bytes.Equal(out[ihdrEnd:ihdrEnd+len(first)], first) {
		t.Errorf("the prompt chunk does not follow IHDR")
	}
	// image/png checks every chunk's CRC and the order of critical chunks.
	dec, err := png.Decode(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("decode after insert: %v", err)
	}
	if dec.Bounds() != img.Bounds() || dec.At(1, 1) != img.At(1, 1) {
		t.Errorf("pixels changed")
	}
	same, err := InsertAfterIHDR(buf.Bytes())
	if err != nil || !bytes.Equal(same, buf.Bytes()) {
		t.Errorf("no texts: got %d bytes, %v", len(same), err)
	}
}

func TestInsertAfterIHDRRefusesNonPNG(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("GIF89a............................"), []byte(Signature + "\x00\x00\x00\x0dIDAT.............")} {
		if _, err := InsertAfterIHDR(b, Text{"k", nil}); !errors.Is(err, ErrNotPNG) {
			t.Errorf("%q: got %v, want ErrNotPNG", b, err)
		}
	}
}
