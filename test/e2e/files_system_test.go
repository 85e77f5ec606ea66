package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfysim"
)

// bigFilePrompt is an API prompt of the simulator's AtelierSimBigFile node,
// which saves a "video" of the given size like SaveVideo.
func bigFilePrompt(size int64, seed uint64, prefix string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"1": {"class_type": "AtelierSimBigFile", "inputs": {"bytes": %d, "seed": %d, "filename_prefix": %q, "format": "mp4"}}}`, size, seed, prefix))
}

// bigFileContent returns the first n bytes the simulator writes for seed.
func bigFileContent(seed uint64, n int64) []byte {
	b := make([]byte, n)
	_, _ = comfysim.BigFileContent(seed).Read(b)
	return b
}

// bigFileSHA256 hashes n bytes of the simulator's content for seed without
// holding them.
func bigFileSHA256(seed uint64, n int64) string {
	h := sha256.New()
	gen := comfysim.BigFileContent(seed)
	buf := make([]byte, 4<<20)
	for left := n; left > 0; {
		k := int(min(int64(len(buf)), left))
		_, _ = gen.Read(buf[:k])
		h.Write(buf[:k])
		left -= int64(k)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// videoOutput waits for prompt id's history and returns its only file,
// checking the SaveVideo shape ("images" plus "animated": [true]).
func (p *participant) videoOutput(id string, within time.Duration) outputImage {
	p.t.Helper()
	entry := p.awaitHistory(id, within)
	var outputs map[string]struct {
		Images   []outputImage `json:"images"`
		Animated []bool        `json:"animated"`
	}
	require.NoError(p.t, json.Unmarshal(entry["outputs"], &outputs), string(entry["outputs"]))
	out, ok := outputs["1"]
	require.True(p.t, ok, "no output of node 1: %s (status %s)", entry["outputs"], entry["status"])
	require.Len(p.t, out.Images, 1)
	require.Equal(p.t, []bool{true}, out.Animated)
	return out.Images[0]
}

// get is a streaming GET with the participant's credentials.
func (p *participant) get(path string, header http.Header) *http.Response {
	p.t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.base+path, nil)
	require.NoError(p.t, err)
	req.SetBasicAuth(p.user, p.pass)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(p.t, err)
	p.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func viewPath(img outputImage) string {
	return "/view?" + url.Values{"filename": {img.Filename}, "subfolder": {img.Subfolder}, "type": {img.Type}}.Encode()
}

// TestFilesLargeVideoThroughTheSystem: a participant's workflow saves a
// 1 GiB video on the GPU box; the agent ships it to mello while the job
// runs; the participant downloads it through the proxy's /view and gets the
// very bytes the GPU box wrote (sha256), with the headers a browser needs.
func TestFilesLargeVideoThroughTheSystem(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, systemOpts{users: []string{"user001"}, gpus: 1})
	p := sys.participant("user001")
	const size, seed = 1 << 30, 2026

	want := make(chan string, 1)
	go func() { want <- bigFileSHA256(seed, size) }()
	id := p.queue(bigFilePrompt(size, seed, "video/LTX-2"), "files-e2e")
	img := p.videoOutput(id, 9*testutil.WaitTimeout()) // a GB-sized file
	require.Equal(t, "video", img.Subfolder)
	require.Equal(t, "output", img.Type)
	require.True(t, strings.HasPrefix(img.Filename, "LTX-2_") && strings.HasSuffix(img.Filename, ".mp4"), img.Filename)

	start := time.Now()
	resp := p.get(viewPath(img), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, fmt.Sprint(size), resp.Header.Get("Content-Length"))
	require.Equal(t, "video/mp4", resp.Header.Get("Content-Type"))
	require.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
	_, params, err := mime.ParseMediaType("attachment; " + resp.Header.Get("Content-Disposition"))
	require.NoError(t, err)
	require.Equal(t, img.Filename, params["filename"])
	h := sha256.New()
	n, err := io.CopyBuffer(h, resp.Body, make([]byte, 1<<20))
	require.NoError(t, err)
	require.Equal(t, int64(size), n)
	sum := hex.EncodeToString(h.Sum(nil))
	require.Equal(t, <-want, sum, "the participant downloads exactly what the GPU box wrote")
	require.Equal(t, `"sha256-`+sum+`"`, resp.Header.Get("ETag"), "strong ETag from the verified sha256")
	t.Logf("1 GiB downloaded through the proxy in %s", time.Since(start).Round(time.Millisecond))

	// Nothing is left in the broker's staging area once the file is stored.
	staged := 0
	_ = filepath.WalkDir(filepath.Join(sys.dataDir, "staging"), func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			staged++
		}
		return nil
	})
	require.Zero(t, staged, "staging cleaned up after commit")
}

// TestFilesViewRange checks /view's answers to Range requests on a shipped
// output as an HTTP server should give them (RFC 9110 §14).
func TestFilesViewRange(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, systemOpts{users: []string{"user001"}, gpus: 1})
	p := sys.participant("user001")
	const size, seed = 3<<20 + 17, 7
	data := bigFileContent(seed, size)
	img := p.videoOutput(p.queue(bigFilePrompt(size, seed, "clips/range"), "range"), 3*testutil.WaitTimeout())
	path := viewPath(img)

	full := p.get(path, nil)
	require.Equal(t, http.StatusOK, full.StatusCode)
	etag := full.Header.Get("ETag")
	require.NotEmpty(t, etag)
	_ = full.Body.Close()

	for _, tc := range []struct {
		name, rng string
		from, to  int64 // inclusive
	}{
		{"first bytes", "bytes=0-99", 0, 99},
		{"middle", "bytes=1048576-1049599", 1 << 20, 1<<20 + 1023},
		{"suffix", "bytes=-500", size - 500, size - 1},
		{"open end", "bytes=3145000-", 3145000, size - 1},
		{"end clamped", "bytes=3145000-99999999", 3145000, size - 1},
	} {
		resp := p.get(path, http.Header{"Range": {tc.rng}})
		require.Equal(t, http.StatusPartialContent, resp.StatusCode, tc.name)
		require.Equal(t, fmt.Sprintf("bytes %d-%d/%d", tc.from, tc.to, size), resp.Header.Get("Content-Range"), tc.name)
		require.Equal(t, fmt.Sprint(tc.to-tc.from+1), resp.Header.Get("Content-Length"), tc.name)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, data[tc.from:tc.to+1], body, tc.name)
	}

	// Two ranges: multipart/byteranges.
	resp := p.get(path, http.Header{"Range": {"bytes=0-9,100-109"}})
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/byteranges", mt)

	// Unsatisfiable and malformed ranges: 416, with the size for the former.
	for _, rng := range []string{fmt.Sprintf("bytes=%d-", size), "bytes=99999999-100000000"} {
		resp := p.get(path, http.Header{"Range": {rng}})
		require.Equal(t, http.StatusRequestedRangeNotSatisfiable, resp.StatusCode, rng)
		require.Equal(t, fmt.Sprintf("bytes */%d", size), resp.Header.Get("Content-Range"), rng)
	}
	for _, rng := range []string{"bytes=abc", "bytes=5-2", "bytes=-"} {
		resp := p.get(path, http.Header{"Range": {rng}})
		require.Equal(t, http.StatusRequestedRangeNotSatisfiable, resp.StatusCode, rng)
	}
	// (A Range in another unit, "items=0-5", gets 416 from http.ServeContent
	// although RFC 9110 §14.2 says to ignore it; left to the proxy.)

	// Conditional requests with the ETag.
	resp = p.get(path, http.Header{"If-None-Match": {etag}})
	require.Equal(t, http.StatusNotModified, resp.StatusCode)
	resp = p.get(path, http.Header{"Range": {"bytes=0-9"}, "If-Range": {etag}})
	require.Equal(t, http.StatusPartialContent, resp.StatusCode, "If-Range with the current ETag resumes")
	resp = p.get(path, http.Header{"Range": {"bytes=0-9"}, "If-Range": {`"sha256-stale"`}})
	require.Equal(t, http.StatusOK, resp.StatusCode, "If-Range with a stale ETag restarts the download")
}

// TestFilesCustomNodeOutputKeys: outputs reported under the keys custom
// nodes use ("gifs" of VHS_VideoCombine, "video", "audio" of SaveAudio) are
// shipped like "images" and downloadable under the names the history shows.
func TestFilesCustomNodeOutputKeys(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, systemOpts{users: []string{"user001"}, gpus: 1})
	p := sys.participant("user001")
	prompt := json.RawMessage(`{
		"1": {"class_type": "AtelierSimBigFile", "inputs": {"bytes": 300001, "seed": 1, "filename_prefix": "vhs/AnimateDiff", "format": "mp4", "ui_key": "gifs"}},
		"2": {"class_type": "AtelierSimBigFile", "inputs": {"bytes": 200002, "seed": 2, "filename_prefix": "clips/wan", "format": "webm", "ui_key": "video"}},
		"3": {"class_type": "AtelierSimBigFile", "inputs": {"bytes": 100003, "seed": 3, "filename_prefix": "audio/ace", "format": "flac", "ui_key": "audio"}}}`)
	entry := p.awaitHistory(p.queue(prompt, "keys"), 3*testutil.WaitTimeout())
	var outputs map[string]map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(entry["outputs"], &outputs), string(entry["outputs"]))
	for node, want := range map[string]struct {
		key  string
		seed uint64
		size int64
		sub  string
	}{"1": {"gifs", 1, 300001, "vhs"}, "2": {"video", 2, 200002, "clips"}, "3": {"audio", 3, 100003, "audio"}} {
		var items []struct {
			outputImage
			Format string `json:"format"`
		}
		require.NoError(t, json.Unmarshal(outputs[node][want.key], &items), "node %s: %s", node, outputs[node])
		require.Len(t, items, 1, node)
		require.Equal(t, want.sub, items[0].Subfolder)
		if want.key == "gifs" {
			require.Equal(t, "video/mp4", items[0].Format, "extra fields of the item are kept")
		}
		code, body := p.view(items[0].outputImage)
		require.Equal(t, http.StatusOK, code, node)
		require.Equal(t, bigFileContent(want.seed, want.size), body, node)
	}
}
