// Package pngtext writes PNG tEXt chunks, the way ComfyUI embeds a
// prompt and its workflow in the images it saves (keyword "prompt",
// then one chunk per extra_pnginfo key). The simulator writes them into
// its PNGs; the agent rewrites the "prompt" one before a file ships.
package pngtext

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Signature starts every PNG file.
const Signature = "\x89PNG\r\n\x1a\n"

// ChunkType is the type of a Latin-1 text chunk.
const ChunkType = "tEXt"

// ihdrEnd is where the IHDR chunk, always first and 13 bytes long, ends.
const ihdrEnd = len(Signature) + 4 + 4 + 13 + 4

// Text is one keyword and its text.
type Text struct {
	Keyword string
	Text    []byte
}

// Chunk is a whole tEXt chunk: length, type, keyword, NUL, text, CRC.
func Chunk(keyword string, text []byte) []byte {
	payload := len(keyword) + 1 + len(text)
	b := make([]byte, 0, 12+payload)
	b = binary.BigEndian.AppendUint32(b, uint32(payload))
	b = append(b, ChunkType...)
	b = append(b, keyword...)
	b = append(b, 0)
	b = append(b, text...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b[4:]))
}

// ErrNotPNG: the data does not start with a PNG signature and IHDR.
var ErrNotPNG = errors.New("not a PNG with an IHDR chunk")

// InsertAfterIHDR returns png with a tEXt chunk for each text right
// after IHDR, in order, which is where Pillow writes them.
func InsertAfterIHDR(png []byte, texts ...Text) ([]byte, error) {
	if len(png) < ihdrEnd || string(png[:len(Signature)]) != Signature ||
		string(png[len(Signature)+4:len(Signature)+8]) != "IHDR" ||
		binary.BigEndian.Uint32(png[len(Signature):]) != 13 {
		return nil, ErrNotPNG
	}
	if len(texts) == 0 {
		return png, nil
	}
	var out bytes.Buffer
	out.Write(png[:ihdrEnd])
	for _, t := range texts {
		out.Write(Chunk(t.Keyword, t.Text))
	}
	out.Write(png[ihdrEnd:])
	return out.Bytes(), nil
}
