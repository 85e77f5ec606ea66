package proxy

import (
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// The GPU side's model-manager routes come from the pool catalog, and the
// GPU-side file routes and /free are answered by the proxy: none of them
// reaches the participant's CPU-only ComfyUI UI, whose models are empty.
func TestGPUSideRoutesNeverReachTheUI(t *testing.T) {
	t.Parallel()
	var uiHits atomic.Int32
	b := setup(t, withConfig(func(c *Config) {
		c.Fallback = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			uiHits.Add(1)
			w.WriteHeader(http.StatusTeapot)
		})
	}))
	for _, prefix := range []string{"/user001", "/user001/api"} {
		r := b.do(http.MethodGet, prefix+"/experiment/models", alice, "")
		require.Equal(t, http.StatusOK, r.status)
		require.JSONEq(t, `[{"name": "checkpoints", "folders": []}, {"name": "loras", "folders": []}]`, string(r.body))
		r = b.do(http.MethodGet, prefix+"/experiment/models/checkpoints", alice, "")
		require.Equal(t, http.StatusOK, r.status)
		require.JSONEq(t, `[{"name": "a.safetensors", "pathIndex": 0}, {"name": "b.safetensors", "pathIndex": 0}]`, string(r.body))
		for _, path := range []string{"/experiment/models/nope", "/experiment/models/preview/checkpoints/0/a.safetensors",
			"/view_metadata/checkpoints?filename=a.safetensors", "/models/nope"} {
			r = b.do(http.MethodGet, prefix+path, alice, "")
			require.Equal(t, http.StatusNotFound, r.status, path)
			require.Empty(t, r.body, path)
		}
		r = b.do(http.MethodPost, prefix+"/free", alice, `{"unload_models": true, "free_memory": true}`)
		require.Equal(t, http.StatusOK, r.status)
		require.Empty(t, r.body)
		r = b.do(http.MethodPost, prefix+"/free", alice, `not json`)
		require.Equal(t, http.StatusInternalServerError, r.status, "ComfyUI's request.json() raises")
	}
	// A pool without a catalog: empty lists, not the UI's.
	require.JSONEq(t, `[]`, string(b.do(http.MethodGet, "/user003/experiment/models", carol, "").body))
	require.Equal(t, http.StatusNotFound, b.do(http.MethodGet, "/user003/experiment/models/checkpoints", carol, "").status)
	require.Zero(t, uiHits.Load())
	// Everything else still goes there.
	require.Equal(t, http.StatusTeapot, b.do(http.MethodGet, "/user001/settings", alice, "").status)
}
