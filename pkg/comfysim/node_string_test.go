package comfysim

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The string nodes have ComfyUI's v3 object_info layout, byte for byte.
func TestStringNodesObjectInfo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	status, raw, _ := b.get(t, "/object_info/StringConcatenate")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `{"StringConcatenate": {"input": {"required": {"string_a": ["STRING", {"multiline": true}], `+
		`"string_b": ["STRING", {"multiline": true}], "delimiter": ["STRING", {"default": "", "multiline": false}]}}, `+
		`"input_order": {"required": ["string_a", "string_b", "delimiter"]}, "output": ["STRING"], "output_is_list": [false], `+
		`"output_name": ["STRING"], "output_tooltips": [null], "name": "StringConcatenate", "display_name": "Concatenate", `+
		`"description": "", "python_module": "comfy_extras.nodes_string", "category": "utils/string", "output_node": false, `+
		`"deprecated": false, "experimental": false, "api_node": false}}`, string(raw))
	status, raw, _ = b.get(t, "/object_info/PrimitiveString")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `{"PrimitiveString": {"input": {"required": {"value": ["STRING", {"multiline": false}]}}, `+
		`"input_order": {"required": ["value"]}, "output": ["STRING"], "output_is_list": [false], "output_name": ["STRING"], `+
		`"output_tooltips": [null], "name": "PrimitiveString", "display_name": "String", "description": "", `+
		`"python_module": "comfy_extras.nodes_primitive", "category": "utils/primitive", "output_node": false, `+
		`"deprecated": false, "experimental": false, "api_node": false}}`, string(raw))
	var all map[string]json.RawMessage
	b.getJSON(t, "/object_info", &all)
	require.Contains(t, all, "PrimitiveStringMultiline")
}

// A filename_prefix computed by the string nodes: SaveImage writes where
// the computed text says, and a link of the wrong type is refused as
// ComfyUI refuses it.
func TestStringNodesFeedFilenamePrefix(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(t, "/ws?clientId=str")
	ws.next()
	id := b.submit(t, json.RawMessage(`{
	 "1": {"class_type": "PrimitiveString", "inputs": {"value": "night"}},
	 "2": {"class_type": "StringConcatenate", "inputs": {"string_a": "walk/", "string_b": ["1", 0], "delimiter": ""}},
	 "3": {"class_type": "StringConcatenate", "inputs": {"string_a": ["2", 0], "string_b": "shot", "delimiter": "_"}},
	 "4": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 255}},
	 "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": ["3", 0]}}}`), "str")
	msgs := ws.until(id)
	require.Contains(t, types(msgs), "execution_success")
	executed := find(msgs, "executed")
	require.Len(t, executed, 1)
	var data struct {
		Output json.RawMessage `json:"output"`
	}
	require.NoError(t, json.Unmarshal(executed[0].Data, &data))
	require.JSONEq(t, `{"images": [{"filename": "night_shot_00001_.png", "subfolder": "walk", "type": "output"}]}`, string(data.Output))
	_, err := os.Stat(filepath.Join(b.dir, "output", "walk", "night_shot_00001_.png"))
	require.NoError(t, err)

	status, body := b.post(t, "/prompt", map[string]any{"prompt": json.RawMessage(`{
	 "4": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 255}},
	 "2": {"class_type": "StringConcatenate", "inputs": {"string_a": ["4", 0], "string_b": "x", "delimiter": ""}},
	 "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": ["2", 0]}}}`)})
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, string(body), "return_type_mismatch")
}
