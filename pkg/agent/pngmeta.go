package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/atelier-run/atelier/pkg/pngtext"
	"github.com/atelier-run/atelier/pkg/pyjson"
)

// The participant's own prompt in their PNGs. ComfyUI's SaveImage (and
// PreviewImage, SaveAnimatedPNG) embeds the prompt it executed as a tEXt
// chunk "prompt" (json.dumps of the prompt, ASCII), so that loading the
// picture back into ComfyUI restores the workflow. The prompt ComfyUI
// executed is the agent's rewrite of the participant's (filename_prefix
// and file names under <user>/, an inserted StringConcatenate, keys in
// another order): a file shipped as ComfyUI wrote it would differ from
// what ComfyUI writes for the participant's prompt, and queueing it again
// from the picture would send the prefixed names (<user>/<user>/…). So
// while shipping, the agent replaces the text of every tEXt "prompt" chunk
// with the participant's prompt as ComfyUI serialises it, and recomputes
// the chunk's CRC. The rest of the file is shipped from where it lies, by
// reference (the replaced chunks are the only bytes held in memory).
//
// What is not rewritten: the extra_pnginfo chunks ("workflow", and
// SaveAnimatedPNG's "comf" chunks) carry the frontend's graph, which the
// agent does not change; a compressed zTXt or iTXt "prompt" (ComfyUI
// writes neither); and metadata in other formats — SaveAnimatedWEBP's
// EXIF "prompt:…" tag, the video and audio nodes' container tags — which
// keep the prompt ComfyUI executed.

// ownMetadata returns the file to ship for src: a PNG with the
// participant's prompt in place of the one ComfyUI ran, anything else as
// it is.
func (r *run) ownMetadata(src io.ReaderAt, size int64, k fileKey) (io.ReaderAt, int64, error) {
	prompt, err := r.ownPromptJSON()
	if err != nil {
		r.log.Warn().Err(err).Msg("the job's prompt does not decode; outputs keep the prompt ComfyUI ran")
		return src, size, nil
	}
	out, n, err := rewritePNGPrompt(src, size, prompt)
	switch {
	case errors.Is(err, errNotRewritable):
		return src, size, nil
	case err != nil:
		return nil, 0, err
	}
	r.log.Debug().Str("file", k.name).Int64("size", size).Int64("shipped", n).Msg("PNG carries the participant's prompt")
	return out, n, nil
}

// ownPromptJSON is the job's prompt as ComfyUI serialises it in a PNG
// (Python's json.dumps: its separators, keys in the participant's order,
// non-ASCII escaped), computed once per run.
func (r *run) ownPromptJSON() ([]byte, error) {
	r.ownPromptOnce.Do(func() {
		v, err := pyjson.Decode(r.job.Prompt)
		if err == nil {
			r.ownPrompt, err = pyjson.Marshal(v)
		}
		r.ownPromptErr = err
	})
	return r.ownPrompt, r.ownPromptErr
}

// Limits of the chunk scan: a file beyond them is shipped unchanged.
const (
	pngMaxChunks = 1 << 20
	pngMaxText   = 64 << 20 // the new "prompt" text
)

// errNotRewritable: the file is not a PNG the agent can rewrite (it is
// shipped as ComfyUI wrote it).
var errNotRewritable = errors.New("not a rewritable PNG")

// rewritePNGPrompt returns src (size bytes) with the text of each tEXt
// "prompt" chunk replaced by prompt, and the new size. It returns
// errNotRewritable when src is not a well-formed PNG or has no such chunk;
// other errors are read errors.
func rewritePNGPrompt(src io.ReaderAt, size int64, prompt []byte) (io.ReaderAt, int64, error) {
	if len(prompt) > pngMaxText {
		return nil, 0, fmt.Errorf("%w: prompt of %d bytes", errNotRewritable, len(prompt))
	}
	var head [8]byte
	if size < int64(len(pngtext.Signature)) {
		return nil, 0, errNotRewritable
	}
	if _, err := src.ReadAt(head[:], 0); err != nil {
		return nil, 0, err
	}
	if string(head[:]) != pngtext.Signature {
		return nil, 0, errNotRewritable
	}
	const keyword = "prompt\x00"
	chunk := pngtext.Chunk("prompt", prompt)
	out := &splicedReader{}
	kept := int64(0) // src bytes before pos not yet in out
	pos := int64(len(pngtext.Signature))
	replaced := false
	for n := 0; ; n++ {
		if n > pngMaxChunks || pos+12 > size {
			return nil, 0, fmt.Errorf("%w: truncated or too many chunks", errNotRewritable)
		}
		if _, err := src.ReadAt(head[:], pos); err != nil {
			return nil, 0, err
		}
		length := int64(binary.BigEndian.Uint32(head[:4]))
		typ := string(head[4:8])
		end := pos + 12 + length
		if length > 1<<31-1 || end > size {
			return nil, 0, fmt.Errorf("%w: chunk %q overruns the file", errNotRewritable, typ)
		}
		if typ == pngtext.ChunkType && length >= int64(len(keyword)) {
			var kw [len(keyword)]byte
			if _, err := src.ReadAt(kw[:], pos+8); err != nil {
				return nil, 0, err
			}
			if string(kw[:]) == keyword {
				out.addSource(src, kept, pos)
				out.addBytes(chunk)
				kept = end
				replaced = true
			}
		}
		pos = end
		if typ == "IEND" {
			break
		}
	}
	if !replaced {
		return nil, 0, errNotRewritable
	}
	out.addSource(src, kept, size) // IEND, and anything after it, as is
	return out, out.size, nil
}

// splicedReader is an io.ReaderAt over pieces: ranges of a source file
// and bytes held in memory, one after the other.
type splicedReader struct {
	pieces []splicePiece
	size   int64
}

type splicePiece struct {
	at   int64 // offset of the piece in the result
	n    int64
	src  io.ReaderAt // nil: data
	off  int64       // offset in src
	data []byte
}

func (s *splicedReader) addSource(src io.ReaderAt, from, to int64) {
	if to > from {
		s.pieces = append(s.pieces, splicePiece{at: s.size, n: to - from, src: src, off: from})
		s.size += to - from
	}
}

func (s *splicedReader) addBytes(b []byte) {
	s.pieces = append(s.pieces, splicePiece{at: s.size, n: int64(len(b)), data: b})
	s.size += int64(len(b))
}

// ReadAt reads from the pieces that cover [off, off+len(p)).
func (s *splicedReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("splicedReader: negative offset")
	}
	if off >= s.size {
		return 0, io.EOF
	}
	i := sort.Search(len(s.pieces), func(i int) bool { return s.pieces[i].at+s.pieces[i].n > off })
	n := 0
	for ; i < len(s.pieces) && n < len(p); i++ {
		pc := s.pieces[i]
		in := off + int64(n) - pc.at // offset within the piece
		want := min(int64(len(p)-n), pc.n-in)
		if pc.src == nil {
			n += copy(p[n:n+int(want)], pc.data[in:in+want])
			continue
		}
		m, err := pc.src.ReadAt(p[n:n+int(want)], pc.off+in)
		n += m
		if err != nil && !(errors.Is(err, io.EOF) && int64(m) == want) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the file shrank under us
			}
			return n, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
