package stack

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// linkedPrefixPrompt is a prompt whose SaveImage filename_prefix is
// computed: PrimitiveString → StringConcatenate → filename_prefix.
func linkedPrefixPrompt(value string) []byte {
	v, _ := json.Marshal(value)
	return fmt.Appendf(nil, `{"prompt": {
	 "1": {"class_type": "PrimitiveString", "inputs": {"value": %s}},
	 "2": {"class_type": "StringConcatenate", "inputs": {"string_a": ["1", 0], "string_b": "shot", "delimiter": "_"}},
	 "4": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 65280}},
	 "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": ["2", 0]}}}}`, v)
}

// A filename_prefix another node computes, through the whole system: the
// agent puts the participant's folder in front of it at run time (a
// StringConcatenate it inserts), so the file lands in the participant's
// folder and downloads with their names (and their own prompt in the
// PNG); a computed prefix that climbs into another participant's folder,
// or out of ComfyUI's output folder, fails the job, and the other
// participant's files stay out of reach.
func TestLinkedFilenamePrefix(t *testing.T) {
	t.Parallel()
	tb := startStack(t, Config{Users: []string{"user001", "user002"}})
	const alice, bob = "user001", "user002"

	id := tb.submit(t, alice, linkedPrefixPrompt("walk/night"))
	entry := tb.history(t, alice, id)
	require.Equal(t, "success", entry["status"].(map[string]any)["status_str"], "%v", entry["status"])
	images := entry["outputs"].(map[string]any)["5"].(map[string]any)["images"].([]any)
	require.Len(t, images, 1)
	img := images[0].(map[string]any)
	require.Equal(t, map[string]any{"filename": "night_shot_00001_.png", "subfolder": "walk", "type": "output"}, img)
	code, png := tb.do(t, alice, http.MethodGet, "/view?filename=night_shot_00001_.png&subfolder=walk&type=output", nil)
	require.Equal(t, http.StatusOK, code)
	require.True(t, bytes.HasPrefix(png, []byte("\x89PNG")))
	require.NotContains(t, string(png), "atelier_user_", "the PNG carries the participant's prompt, not the agent's")
	require.NotContains(t, string(png), alice+"/")
	require.Contains(t, string(png), `"filename_prefix": ["2", 0]`)

	// Bob's computed prefix climbs into Alice's folder on the GPU box.
	id = tb.submit(t, bob, linkedPrefixPrompt("../"+alice+"/walk/night"))
	entry = tb.history(t, bob, id)
	st := entry["status"].(map[string]any)
	require.Equal(t, "error", st["status_str"])
	msgs, _ := json.Marshal(st["messages"])
	require.Contains(t, string(msgs), "outside your folder", "refused: %s", msgs)
	require.Empty(t, entry["outputs"])
	// Nothing of it reached Alice's files, nor Bob's.
	code, _ = tb.do(t, alice, http.MethodGet, "/view?filename=night_shot_00002_.png&subfolder=walk&type=output", nil)
	require.Equal(t, http.StatusNotFound, code)
	for _, sub := range []string{"walk", "../" + alice + "/walk", alice + "/walk"} {
		for _, name := range []string{"night_shot_00001_.png", "night_shot_00002_.png"} {
			code, _ = tb.do(t, bob, http.MethodGet, "/view?filename="+name+"&subfolder="+sub+"&type=output", nil)
			require.Contains(t, []int{http.StatusNotFound, http.StatusForbidden}, code, "%s/%s", sub, name)
		}
	}

	// And out of ComfyUI's output folder altogether: ComfyUI refuses it.
	id = tb.submit(t, bob, linkedPrefixPrompt("../../escape"))
	entry = tb.history(t, bob, id)
	st = entry["status"].(map[string]any)
	require.Equal(t, "error", st["status_str"])
	msgs, _ = json.Marshal(st["messages"])
	require.Contains(t, string(msgs), "Saving image outside the output folder is not allowed")

	// Alice's file is as it was.
	code, again := tb.do(t, alice, http.MethodGet, "/view?filename=night_shot_00001_.png&subfolder=walk&type=output", nil)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, png, again)
}
