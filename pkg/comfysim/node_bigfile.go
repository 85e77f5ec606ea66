package comfysim

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// AtelierSimBigFile is a simulator-only output node that writes a large file
// the way ComfyUI's SaveVideo (and VHS_VideoCombine) do, so that tests can
// ship multi-GB "videos" without a GPU: <prefix>_<counter:05>_.<format>
// under output/, reported as {"images": [...], "animated": [true]} like
// SaveVideo, or under the key custom nodes use (ui_key): "gifs" like
// VHS_VideoCombine, "video", or "audio" like SaveAudio.
//
// The content is BigFileContent(seed): anyone can regenerate it to check a
// download without keeping a copy.
const bigFileNodeName = "AtelierSimBigFile"

// BigFileContent returns the generator of AtelierSimBigFile's content for
// seed: a ChaCha8 stream keyed with the seed (little-endian) in the first 8
// key bytes. The file of size n is the first n bytes of the stream.
func BigFileContent(seed uint64) *rand.ChaCha8 {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return rand.NewChaCha8(key)
}

func bigFileNodeDef() *nodeDef {
	return &nodeDef{
		name: bigFileNodeName, displayName: "Big File (simulator)", category: "atelier/testing",
		description: "Writes a file of the given size with deterministic content, like a video saved by SaveVideo.",
		required: []inputSpec{
			{name: "bytes", typ: "INT", opts: object{{"default", num("1048576")}, {"min", num("0")}, {"max", num("68719476736")}, {"step", num("1")}}},
			{name: "seed", typ: "INT", opts: object{{"default", num("0")}, {"min", num("0")}, {"max", num("18446744073709551615")}}},
			{name: "filename_prefix", typ: "STRING", opts: object{{"default", "video/ComfyUI"}}},
			{name: "format", combo: fixed([]string{"mp4", "webm", "gif", "flac"})},
		},
		optional: []inputSpec{
			{name: "ui_key", combo: fixed([]string{"images", "gifs", "video", "audio"})},
		},
		outputs:    []string{},
		outputNode: true,
		run:        runBigFile,
	}
}

func runBigFile(nc *nodeCtx) ([]any, object, error) {
	size := nc.intArg("bytes")
	seed := uint64(nc.intArg("seed"))
	format := nc.strArg("format")
	prefix := nc.strArg("filename_prefix")
	outDir := nc.s().cfg.OutputDir

	norm := filepath.Clean(filepath.FromSlash(prefix))
	subfolder := filepath.Dir(norm)
	if subfolder == "." {
		subfolder = ""
	}
	filename := filepath.Base(norm)
	folder := filepath.Join(outDir, subfolder)
	if !within(outDir, folder) || strings.ContainsAny(format, `/\`) {
		return nil, nil, &execError{typ: "Exception", msg: "**** ERROR: Saving image outside the output folder is not allowed."}
	}
	if err := os.MkdirAll(folder, 0o755); err != nil {
		return nil, nil, &execError{typ: "OSError", msg: err.Error()}
	}
	name := fmt.Sprintf("%s_%05d_.%s", filename, nextCounter(folder, filename), format)
	if err := writeBigFile(filepath.Join(folder, name), seed, size); err != nil {
		return nil, nil, &execError{typ: "OSError", msg: err.Error()}
	}
	file := object{{"filename", name}, {"subfolder", filepath.ToSlash(subfolder)}, {"type", "output"}}
	switch key := nc.strArg("ui_key"); key {
	case "gifs":
		// VHS_VideoCombine's item carries more than the file's name.
		file = append(file, object{{"format", "video/" + format}, {"frame_rate", num("24.0")}}...)
		return []any{}, object{{"gifs", []any{file}}}, nil
	case "video", "audio":
		return []any{}, object{{key, []any{file}}}, nil
	}
	return []any{}, object{{"images", []any{file}}, {"animated", []any{true}}}, nil
}

// writeBigFile streams size bytes of BigFileContent(seed) to path through a
// 1 MiB buffer: memory stays flat whatever the size.
func writeBigFile(path string, seed uint64, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	gen := BigFileContent(seed)
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := int(min(int64(len(buf)), left))
		_, _ = gen.Read(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
		left -= int64(n)
	}
	return f.Close()
}
