package proxy

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfyvalidate"
)

// Upload combos in both object_info forms (a list of options first, and
// v3's ["COMBO", {"options": …}]) get the participant's files of their
// media class; other inputs and remote combos of another folder are left
// alone.
func TestUploadListsReplaceTheGPUSidesOptions(t *testing.T) {
	t.Parallel()
	oi := `{
	 "LoadImage": {"input": {"required": {"image": [["gpu.png"], {"image_upload": true}]}}, "output": ["IMAGE", "MASK"]},
	 "LoadVideo": {"input": {"required": {"file": ["COMBO", {"options": ["gpu.mp4"], "video_upload": true}]}}, "output": ["VIDEO"]},
	 "LoadAudio": {"input": {"optional": {"audio": [["gpu.wav"], {"audio_upload": true}], "gain": ["FLOAT", {}]}}, "output": ["AUDIO"]},
	 "LoadImageOutput": {"input": {"required": {"image": ["COMBO", {"image_upload": true, "image_folder": "output"}]}}, "output": ["IMAGE"]},
	 "Sampler": {"input": {"required": {"sampler": [["euler"], {}]}}, "output": ["X"]}
	}`
	cat, err := comfyvalidate.FromObjectInfo([]byte(oi))
	require.NoError(t, err)
	ups := uploadInputsOf(cat)
	require.Equal(t, map[string][]uploadInput{
		"LoadImage": {{"required", "image", "image"}},
		"LoadVideo": {{"required", "file", "video"}},
		"LoadAudio": {{"optional", "audio", "audio"}},
	}, ups)

	var classes map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(oi), &classes))
	files := map[string][]string{"image": {"a.png", "b.webp"}, "video": {"clip.mp4"}}
	get := func(class string) map[string]any {
		var m map[string]any
		require.NoError(t, json.Unmarshal(withUploadLists(classes[class], ups[class], files), &m))
		return m["input"].(map[string]any)
	}
	require.Equal(t, []any{[]any{"a.png", "b.webp"}, map[string]any{"image_upload": true}},
		get("LoadImage")["required"].(map[string]any)["image"])
	require.Equal(t, []any{"COMBO", map[string]any{"options": []any{"clip.mp4"}, "video_upload": true}},
		get("LoadVideo")["required"].(map[string]any)["file"])
	require.Equal(t, []any{[]any{}, map[string]any{"audio_upload": true}},
		get("LoadAudio")["optional"].(map[string]any)["audio"], "no audio files: an empty list, never the GPU box's")

	for name, want := range map[string]string{
		"a.PNG": "image", "b.webp": "image", "c.mp4": "video", "d.flac": "audio", "e.txt": "text", "f": "",
	} {
		require.Equal(t, want, mediaOf(name), name)
	}
}
