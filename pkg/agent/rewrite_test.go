package agent

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRewritePromptPrefixesUserFolders(t *testing.T) {
	t.Parallel()
	in := `{"1":{"class_type":"LoadImage","inputs":{"image":"sub/example.png [input]"}},
	        "2":{"class_type":"SaveImage","inputs":{"images":["1",0],"filename_prefix":"sim/noweights"},"_meta":{"title":"x"}},
	        "3":{"class_type":"MyLoader","inputs":{"picture":"a.png"}}}`
	files := uploadInputsFrom(json.RawMessage(`{"MyLoader":{"input":{"required":{"picture":[["a.png"],{"image_upload":true}]}}}}`))
	out, err := rewritePrompt(json.RawMessage(in), "user001", files)
	require.NoError(t, err)
	var g map[string]struct {
		Inputs map[string]any `json:"inputs"`
		Meta   map[string]any `json:"_meta"`
	}
	require.NoError(t, json.Unmarshal(out, &g))
	require.Equal(t, "user001/sub/example.png [input]", g["1"].Inputs["image"])
	require.Equal(t, "user001/sim/noweights", g["2"].Inputs["filename_prefix"])
	require.Equal(t, []any{"1", float64(0)}, g["2"].Inputs["images"])
	require.Equal(t, "x", g["2"].Meta["title"])
	require.Equal(t, "user001/a.png", g["3"].Inputs["picture"])
}

func TestRewritePromptRefusesEscapes(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"../user002/x", "a/../x", "/etc/passwd", `..\x`, "sim/../../user002/y"} {
		p, _ := json.Marshal(map[string]any{"1": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": bad}}})
		_, err := rewritePrompt(p, "user001", defaultUploadInputs())
		require.ErrorIs(t, err, ErrPathEscapes, bad)
	}
	// Harmless dots stay allowed.
	p := json.RawMessage(`{"1":{"class_type":"SaveImage","inputs":{"filename_prefix":"a/./b..c"}}}`)
	out, err := rewritePrompt(p, "user001", defaultUploadInputs())
	require.NoError(t, err)
	require.Contains(t, string(out), `"user001/a/b..c"`)
}

func TestStripUser(t *testing.T) {
	t.Parallel()
	require.Equal(t, "sim", stripUser("user001", "user001/sim"))
	require.Equal(t, "", stripUser("user001", "user001"))
	require.Equal(t, "", stripUser("user001", ""))
	require.Equal(t, "user0012/x", stripUser("user001", "user0012/x"))
}
