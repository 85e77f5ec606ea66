package broker

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/comfyvalidate"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

func (tb *testBundle) sendCatalog(t *testing.T, c wire.Catalog) {
	t.Helper()
	data, err := wire.EncodeCatalog(c)
	require.NoError(t, err)
	m, err := tb.nc.Request(wire.CatalogSubject(c.Agent), data, 5*time.Second)
	require.NoError(t, err)
	var ack wire.CatalogAck
	require.NoError(t, json.Unmarshal(m.Data, &ack))
	require.Empty(t, ack.Error)
}

func (tb *testBundle) poolCatalog(t *testing.T, pool string) wire.Catalog {
	t.Helper()
	kv, err := tb.js.KeyValue(tb.ctx, wire.BucketCatalog)
	require.NoError(t, err)
	e, err := kv.Get(tb.ctx, wire.PoolCatalogKey(pool))
	require.NoError(t, err)
	c, err := wire.DecodeCatalog(e.Value())
	require.NoError(t, err)
	return c
}

// objectInfo is a small object_info: a checkpoint loader whose ckpt_name
// combo lists ckpts, a v3-style node whose combo lists upscalers, and a
// node only some agents have.
func objectInfo(ckpts, upscalers []string, extra string) json.RawMessage {
	list := func(xs []string) string { b, _ := json.Marshal(xs); return string(b) }
	oi := `{
  "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [` + list(ckpts) + `, {"tooltip": "The checkpoint"}]}},
    "input_order": {"required": ["ckpt_name"]}, "output": ["MODEL", "CLIP", "VAE"], "output_is_list": [false, false, false],
    "output_name": ["MODEL", "CLIP", "VAE"], "name": "CheckpointLoaderSimple", "display_name": "Load Checkpoint",
    "description": "", "python_module": "nodes", "category": "loaders", "output_node": false},
  "UpscaleModelLoader": {"input": {"required": {"model_name": ["COMBO", {"options": ` + list(upscalers) + `, "multiselect": false}],
      "scale": ["FLOAT", {"default": 2.0, "min": 1.0, "max": 8.0}]}},
    "input_order": {"required": ["model_name", "scale"]}, "output": ["UPSCALE_MODEL"], "output_is_list": [false],
    "output_name": ["UPSCALE_MODEL"], "name": "UpscaleModelLoader", "display_name": "Load Upscale Model",
    "description": "", "python_module": "comfy_extras.nodes_upscale_model", "category": "loaders", "output_node": false}`
	if extra != "" {
		oi += `,
  "` + extra + `": {"input": {"required": {}}, "input_order": {"required": []}, "output": ["IMAGE"], "output_is_list": [false],
    "output_name": ["IMAGE"], "name": "` + extra + `", "display_name": "` + extra + `", "description": "",
    "python_module": "custom_nodes.pack", "category": "image", "output_node": false}`
	}
	return json.RawMessage(oi + "}")
}

// A pool's catalog is what the pool can run: two agents with different
// checkpoints give a ckpt_name combo with both agents' files (in list and
// v3 "COMBO" form), the union of node classes, and number spellings kept.
func TestPoolCatalogUnionsComboOptions(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.sendCatalog(t, wire.Catalog{Agent: "a1", Pool: "studio",
		ObjectInfo: objectInfo([]string{"sd15.safetensors", "sdxl.safetensors"}, []string{"4x.pth"}, "OnlyOnA1"),
		Models:     map[string][]string{"checkpoints": {"sd15.safetensors", "sdxl.safetensors"}}})
	tb.sendCatalog(t, wire.Catalog{Agent: "a2", Pool: "studio",
		ObjectInfo: objectInfo([]string{"flux.safetensors", "sdxl.safetensors"}, []string{"2x.pth", "4x.pth"}, ""),
		Models:     map[string][]string{"checkpoints": {"flux.safetensors", "sdxl.safetensors"}}})
	tb.sendCatalog(t, wire.Catalog{Agent: "b1", Pool: "other",
		ObjectInfo: objectInfo([]string{"video.safetensors"}, nil, "")})

	c := tb.poolCatalog(t, "studio")
	require.Equal(t, []string{"flux.safetensors", "sd15.safetensors", "sdxl.safetensors"}, c.Models["checkpoints"])

	oi, err := comfyvalidate.FromObjectInfo(c.ObjectInfo)
	require.NoError(t, err)
	loader, ok := oi.Lookup("CheckpointLoaderSimple")
	require.True(t, ok)
	require.Equal(t, []string{"sd15.safetensors", "sdxl.safetensors", "flux.safetensors"}, inputNamed(t, *loader, "ckpt_name").Combo)
	upscale, ok := oi.Lookup("UpscaleModelLoader")
	require.True(t, ok)
	require.Equal(t, []string{"4x.pth", "2x.pth"}, inputNamed(t, *upscale, "model_name").Combo)
	_, ok = oi.Lookup("OnlyOnA1")
	require.True(t, ok, "a node class of one agent is the pool's")

	// The raw definition keeps ComfyUI's spelling and key order.
	var raw map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(c.ObjectInfo, &raw))
	require.Contains(t, string(raw["UpscaleModelLoader"]), `"default":2.0`)
	require.Contains(t, string(raw["UpscaleModelLoader"]), `"multiselect":false`)
	require.Regexp(t, `^\{"input":`, string(raw["CheckpointLoaderSimple"]))

	// The other pool is its own.
	other := tb.poolCatalog(t, "other")
	oi, err = comfyvalidate.FromObjectInfo(other.ObjectInfo)
	require.NoError(t, err)
	loader, _ = oi.Lookup("CheckpointLoaderSimple")
	require.Equal(t, []string{"video.safetensors"}, inputNamed(t, *loader, "ckpt_name").Combo)
}

func inputNamed(t *testing.T, d comfyvalidate.NodeDef, name string) comfyvalidate.Input {
	t.Helper()
	for _, in := range append(d.Required, d.Optional...) {
		if in.Name == name {
			return in
		}
	}
	t.Fatalf("no input %s", name)
	return comfyvalidate.Input{}
}
