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
	out, err := rewritePrompt(json.RawMessage(in), "user001", promptRules{files: files})
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
		_, err := rewritePrompt(p, "user001", defaultPromptRules())
		require.ErrorIs(t, err, ErrPathEscapes, bad)
	}
	// Harmless dots stay allowed.
	p := json.RawMessage(`{"1":{"class_type":"SaveImage","inputs":{"filename_prefix":"a/./b..c"}}}`)
	out, err := rewritePrompt(p, "user001", defaultPromptRules())
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

// A filename_prefix another node computes gets "<user>/" in front at run
// time, through a StringConcatenate node the agent inserts; without that
// node in ComfyUI the prompt is refused. An input file name fed by a link
// is always refused (the node would read before anyone could check it).
func TestRewritePromptLinkedNames(t *testing.T) {
	t.Parallel()
	in := json.RawMessage(`{"7":{"class_type":"PrimitiveString","inputs":{"value":"../user002/x"}},
	        "8":{"class_type":"SaveImage","inputs":{"images":["1",0],"filename_prefix":["7",0]}}}`)
	info := json.RawMessage(`{"StringConcatenate":{"input":{"required":{"string_a":["STRING",{}],"string_b":["STRING",{}],"delimiter":["STRING",{}]}}}}`)
	rules := promptRulesFrom(info)
	require.True(t, rules.concat)
	out, err := rewritePrompt(in, "user001", rules)
	require.NoError(t, err)
	var g map[string]struct {
		Class  string         `json:"class_type"`
		Inputs map[string]any `json:"inputs"`
	}
	require.NoError(t, json.Unmarshal(out, &g))
	prefix := g["8"].Inputs["filename_prefix"].([]any)
	added := g[prefix[0].(string)]
	require.Equal(t, "StringConcatenate", added.Class)
	require.Equal(t, "user001/", added.Inputs["string_a"])
	require.Equal(t, []any{"7", float64(0)}, added.Inputs["string_b"])
	require.Equal(t, "", added.Inputs["delimiter"])
	require.Equal(t, "../user002/x", g["7"].Inputs["value"], "the source node is left as it is")

	_, err = rewritePrompt(in, "user001", defaultPromptRules())
	require.ErrorIs(t, err, ErrLinkedFileName, "no StringConcatenate in this ComfyUI")

	load := json.RawMessage(`{"7":{"class_type":"PrimitiveString","inputs":{"value":"../user002/secret.png"}},
	        "1":{"class_type":"LoadImage","inputs":{"image":["7",0]}}}`)
	_, err = rewritePrompt(load, "user001", rules)
	require.ErrorIs(t, err, ErrLinkedFileName)
}

// Only outputs under the job's own folder ship; anything else (another
// participant's folder, the top of the output folder, a name that climbs)
// is refused.
func TestOwnOutput(t *testing.T) {
	t.Parallel()
	for _, ok := range []fileKey{
		{"output", "user001", "a.png"}, {"output", "user001/sim", "a.png"},
		{"temp", "", "ComfyUI_temp_abcde_00001_.png"}, {"temp", "user001", "p.png"},
		{"input", "user001/sub", "x.png"},
	} {
		require.NoError(t, ownOutput("user001", ok), "%+v", ok)
	}
	for _, bad := range []fileKey{
		{"output", "user002", "a.png"}, {"output", "", "a.png"}, {"output", "user0012", "a.png"},
		{"output", "user001/../user002", "a.png"}, {"output", "user001", "../a.png"},
		{"output", "/user001", "a.png"}, {"temp", "user002", "p.png"}, {"input", "", "x.png"},
		{"output", "user001", ".."}, {"output", `user001\..`, "a.png"},
	} {
		require.ErrorIs(t, ownOutput("user001", bad), ErrForeignOutput, "%+v", bad)
	}
}
