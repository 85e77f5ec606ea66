package comfysim

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The model manager routes (comfyui-api.md §2.4): folders in ComfyUI's
// order without configs and custom_nodes, each with its search path; the
// files of one folder with pathIndex, times and size (from disk where the
// file exists); 404 for an unknown or legacy folder name, for previews and
// for view_metadata (the simulated files have no safetensors header).
func TestExperimentModels(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) {
		c.Models = map[string][]string{"checkpoints": {"b.safetensors", "a.ckpt", "notes.txt"}, "loras": {"sub/l.safetensors"}}
	})
	require.NoError(t, os.MkdirAll(filepath.Join(b.dir, "models", "checkpoints"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(b.dir, "models", "checkpoints", "b.safetensors"), []byte("12345"), 0o644))

	for _, prefix := range []string{"", "/api"} {
		code, body, _ := b.get(t, prefix+"/experiment/models")
		require.Equal(t, http.StatusOK, code)
		var folders []struct {
			Name    string   `json:"name"`
			Folders []string `json:"folders"`
		}
		require.NoError(t, json.Unmarshal(body, &folders))
		var names []string
		for _, f := range folders {
			names = append(names, f.Name)
			require.Len(t, f.Folders, 1)
			require.True(t, filepath.IsAbs(f.Folders[0]))
		}
		require.Equal(t, "checkpoints", names[0])
		require.NotContains(t, names, "configs")
		require.NotContains(t, names, "custom_nodes")
		require.Contains(t, names, "loras")

		code, body, _ = b.get(t, prefix+"/experiment/models/checkpoints")
		require.Equal(t, http.StatusOK, code)
		var files []map[string]any
		require.NoError(t, json.Unmarshal(body, &files))
		require.Len(t, files, 2, "only model extensions")
		require.Equal(t, "a.ckpt", files[0]["name"])
		require.Equal(t, "b.safetensors", files[1]["name"])
		require.EqualValues(t, 5, files[1]["size"])
		for _, f := range files {
			require.EqualValues(t, 0, f["pathIndex"])
			require.Greater(t, f["modified"], 1e9)
			require.Greater(t, f["created"], 1e9)
		}
		require.Contains(t, string(body), `"modified": `, "Python's float seconds")

		code, body, _ = b.get(t, prefix+"/experiment/models/loras")
		require.Equal(t, http.StatusOK, code)
		require.Contains(t, string(body), `"name": "sub/l.safetensors"`)

		for _, path := range []string{
			"/experiment/models/nope", "/experiment/models/unet",
			"/experiment/models/preview/checkpoints/0/b.safetensors",
			"/view_metadata/checkpoints?filename=b.safetensors", "/view_metadata/checkpoints",
		} {
			code, body, _ = b.get(t, prefix+path)
			require.Equal(t, http.StatusNotFound, code, path)
			require.Empty(t, body, path)
		}
	}
}
