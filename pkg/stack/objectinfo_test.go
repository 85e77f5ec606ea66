package stack

import (
	"bytes"
	"encoding/json"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfysim"
)

// upload posts a file to /upload/image (subfolder "" for none) and returns
// the stored name.
func (tb *testBundle) upload(t *testing.T, user, name, subfolder string, content []byte) string {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("image", name)
	require.NoError(t, err)
	_, _ = fw.Write(content)
	if subfolder != "" {
		require.NoError(t, mw.WriteField("subfolder", subfolder))
	}
	require.NoError(t, mw.Close())
	req, _ := http.NewRequestWithContext(tb.ctx, http.MethodPost, tb.stack.ProxyURL()+"/"+user+"/upload/image", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.SetBasicAuth(user, "pw")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var r struct {
		Name string `json:"name"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&r))
	return r.Name
}

// loadImageOptions reads LoadImage's image options from object_info (the
// whole document, or the one class).
func (tb *testBundle) loadImageOptions(t *testing.T, user, path string) []any {
	t.Helper()
	code, body := tb.do(t, user, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, code)
	var oi map[string]struct {
		Input struct {
			Required map[string][]any `json:"required"`
		} `json:"input"`
	}
	require.NoError(t, json.Unmarshal(body, &oi))
	cfg := oi["LoadImage"].Input.Required["image"]
	require.Len(t, cfg, 2)
	require.Equal(t, map[string]any{"image_upload": true}, cfg[1])
	return cfg[0].([]any)
}

// LoadImage's dropdown lists the participant's own uploads, as ComfyUI
// lists its input folder: top-level images only, sorted, nobody else's,
// and the GPU box's input folder never shows.
func TestObjectInfoListsTheParticipantsUploads(t *testing.T) {
	t.Parallel()
	png := []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82")

	// The GPU box's ComfyUI has a file of its own in its input folder,
	// which its object_info (the pool's catalog) lists.
	tb := startStack(t, Config{Users: []string{"user001", "user002"}, ConfigureSim: func(_ int, c *comfysim.Config) {
		c.InputDir = filepath.Join(c.Dir, "input")
		if err := os.MkdirAll(c.InputDir, 0o755); err == nil {
			_ = os.WriteFile(filepath.Join(c.InputDir, "gpu-side.png"), png, 0o644)
		}
	}})
	for _, path := range []string{"/object_info", "/object_info/LoadImage", "/api/object_info/LoadImage"} {
		require.Empty(t, tb.loadImageOptions(t, "user001", path), path)
	}
	require.Equal(t, "zebra.png", tb.upload(t, "user001", "zebra.png", "", png))
	require.Equal(t, "apple.png", tb.upload(t, "user001", "apple.png", "", png))
	tb.upload(t, "user001", "clip.mp4", "", []byte("not an image"))
	tb.upload(t, "user001", "nested.png", "masks", png)
	tb.upload(t, "user002", "bobs.png", "", png)

	for _, path := range []string{"/object_info", "/object_info/LoadImage", "/api/object_info", "/api/object_info/LoadImage"} {
		require.Equal(t, []any{"apple.png", "zebra.png"}, tb.loadImageOptions(t, "user001", path), path)
		require.Equal(t, []any{"bobs.png"}, tb.loadImageOptions(t, "user002", path), path)
	}

	// The listed name validates and runs.
	id := tb.submit(t, "user001", []byte(`{"prompt": {
	  "1": {"class_type": "LoadImage", "inputs": {"image": "apple.png"}},
	  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}}}}`))
	entry := tb.history(t, "user001", id)
	require.Equal(t, "success", entry["status"].(map[string]any)["status_str"])
	// Another participant's upload is not theirs to load.
	code, body := tb.post(t, "user002", []byte(`{"prompt": {
	  "1": {"class_type": "LoadImage", "inputs": {"image": "apple.png"}},
	  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}}}}`))
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, string(body), "Invalid image file: apple.png")
}
