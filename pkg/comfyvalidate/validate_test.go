package comfyvalidate

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/pyjson"
)

// testObjectInfo is a small object_info in ComfyUI's shape: two sources, a
// filter with a combo and ranges, a latent source, and two output nodes.
const testObjectInfo = `{
 "EmptyImage": {"input": {"required": {
    "width": ["INT", {"default": 512, "min": 1, "max": 16384}],
    "height": ["INT", {"default": 512, "min": 1, "max": 16384}]}},
  "output": ["IMAGE"], "output_node": false},
 "EmptyLatentImage": {"input": {"required": {"width": ["INT", {"min": 16}]}}, "output": ["LATENT"], "output_node": false},
 "ImageScale": {"input": {"required": {
    "image": ["IMAGE"],
    "upscale_method": [["nearest-exact", "bilinear"], {}],
    "scale": ["FLOAT", {"min": 0.5, "max": 2.0}]},
   "optional": {"label": ["STRING", {}], "sharp": ["BOOLEAN", {}]}},
  "output": ["IMAGE"], "output_node": false},
 "Checkpoint": {"input": {"required": {"ckpt_name": [["m00.ckpt","m01.ckpt","m02.ckpt","m03.ckpt","m04.ckpt","m05.ckpt","m06.ckpt",
    "m07.ckpt","m08.ckpt","m09.ckpt","m10.ckpt","m11.ckpt","m12.ckpt","m13.ckpt","m14.ckpt","m15.ckpt","m16.ckpt","m17.ckpt",
    "m18.ckpt","m19.ckpt","m20.ckpt"], {}]}}, "output": ["MODEL"], "output_node": false},
 "Sampler": {"input": {"required": {"model": ["MODEL"], "sampler": ["COMBO", {"options": ["euler", "dpm"]}]}}, "output": ["IMAGE"]},
 "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}}, "output": [], "output_node": true},
 "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}}, "output": [], "output_node": true}
}`

func catalog(t *testing.T) *ObjectInfo {
	t.Helper()
	oi, err := FromObjectInfo([]byte(testObjectInfo))
	require.NoError(t, err)
	return oi
}

// prompt decodes a prompt the way the handlers do (ordered).
func prompt(t *testing.T, s string) pyjson.Object {
	t.Helper()
	v, err := pyjson.Decode([]byte(s))
	require.NoError(t, err)
	o, ok := v.(pyjson.Object)
	require.True(t, ok)
	return o
}

// asJSON renders a result part for comparison with ComfyUI's JSON.
func asJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := pyjson.MarshalNoEscape(v)
	require.NoError(t, err)
	return string(b)
}

// A well-formed source feeding both outputs; tests replace parts of it.
const goodNodes = `"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}},
  "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "scale": 1.0}},
  "9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
  "10": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}`

// The top-level refusals: a node without class_type, an unknown class (as
// 0.3.64 and as newer ComfyUI word them), and no output to run.
func TestTopLevelErrors(t *testing.T) {
	t.Parallel()
	cat := catalog(t)
	for _, tc := range []struct {
		name    string
		prompt  string
		partial []string
		newer   bool
		want    string
	}{
		{"missing class_type", `{"1": {"inputs": {}}}`, nil, false,
			`{"type":"invalid_prompt","message":"Cannot execute because a node is missing the class_type property.","details":"Node ID '#1'","extra_info":{}}`},
		{"node is a string", `{"7": "EmptyImage"}`, nil, false,
			`{"type":"invalid_prompt","message":"Cannot execute because a node is missing the class_type property.","details":"Node ID '#7'","extra_info":{}}`},
		{"unknown class", `{"1": {"class_type": "EmptyImage", "inputs": {}}, "4": {"class_type": "Nope", "inputs": {}}}`, nil, false,
			`{"type":"invalid_prompt","message":"Cannot execute because node Nope does not exist.","details":"Node ID '#4'","extra_info":{}}`},
		{"class_type not a string", `{"4": {"class_type": 5, "inputs": {}}}`, nil, false,
			`{"type":"invalid_prompt","message":"Cannot execute because node 5 does not exist.","details":"Node ID '#4'","extra_info":{}}`},
		{"newer: unknown class with a title", `{"4": {"class_type": "Nope", "inputs": {}, "_meta": {"title": "My Node"}}}`, nil, true,
			`{"type":"missing_node_type","message":"Node 'My Node' not found. The custom node may not be installed.","details":"Node ID '#4'","extra_info":{"node_id":"4","class_type":"Nope","node_title":"My Node"}}`},
		{"newer: unknown class without a title", `{"4": {"class_type": "Nope", "inputs": {}}}`, nil, true,
			`{"type":"missing_node_type","message":"Node 'Nope' not found. The custom node may not be installed.","details":"Node ID '#4'","extra_info":{"node_id":"4","class_type":"Nope","node_title":"Nope"}}`},
		{"newer: missing class_type", `{"4": {"inputs": {}, "_meta": {"title": "Untyped"}}}`, nil, true,
			`{"type":"missing_node_type","message":"Node 'Untyped' has no class_type. The workflow may be corrupted or a custom node is missing.","details":"Node ID '#4'","extra_info":{"node_id":"4","class_type":null,"node_title":"Untyped"}}`},
		{"newer: missing class_type, no title", `{"4": {"inputs": {}}}`, nil, true,
			`{"type":"missing_node_type","message":"Node '#4' has no class_type. The workflow may be corrupted or a custom node is missing.","details":"Node ID '#4'","extra_info":{"node_id":"4","class_type":null,"node_title":"#4"}}`},
		{"no output node", `{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}`, nil, false,
			`{"type":"prompt_no_outputs","message":"Prompt has no outputs","details":"","extra_info":{}}`},
		{"partial targets name no output", `{` + goodNodes + `}`, []string{"1", "2"}, false,
			`{"type":"prompt_no_outputs","message":"Prompt has no outputs","details":"","extra_info":{}}`},
		{"empty partial targets", `{` + goodNodes + `}`, []string{}, false,
			`{"type":"prompt_no_outputs","message":"Prompt has no outputs","details":"","extra_info":{}}`},
	} {
		res := ValidateWith(cat, prompt(t, tc.prompt), tc.partial, Options{MissingNodeType: tc.newer})
		require.False(t, res.OK, tc.name)
		require.Equal(t, tc.want, asJSON(t, res.Err), tc.name)
		require.Empty(t, res.NodeErrors, tc.name)
	}
}

// One node error in ComfyUI's shape: the output fails, node_errors names
// the failing node with its errors, class and dependent outputs, and the
// top error's details repeat the output's own reasons.
func TestNodeErrorShapes(t *testing.T) {
	t.Parallel()
	cat := catalog(t)
	img := `{"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}}`
	for _, tc := range []struct {
		name  string
		save  string // SaveImage "9"'s inputs
		extra string // more nodes
		node  string // the failing node
		err   string // its one error
	}{
		{"required input missing", `{"filename_prefix": "x"}`, "", "9",
			`{"type":"required_input_missing","message":"Required input is missing","details":"images","extra_info":{"input_name":"images"}}`},
		{"link of three", `{"images": ["1", 0, 0], "filename_prefix": "x"}`, "", "9",
			`{"type":"bad_linked_input","message":"Bad linked input, must be a length-2 list of [node_id, slot_index]","details":"images","extra_info":{"input_name":"images","input_config":["IMAGE"],"received_value":["1",0,0]}}`},
		{"link of the wrong type", `{"images": ["3", 0], "filename_prefix": "x"}`, `, "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64}}`, "9",
			`{"type":"return_type_mismatch","message":"Return type mismatch between linked nodes","details":"images, received_type(LATENT) mismatch input_type(IMAGE)","extra_info":{"input_name":"images","input_config":["IMAGE"],"received_type":"LATENT","linked_node":["3",0]}}`},
		{"link to a node that is not there", `{"images": ["99", 0], "filename_prefix": "x"}`, "", "9",
			`{"type":"exception_during_validation","message":"Exception when validating node","details":"'99'","extra_info":{"exception_type":"KeyError","traceback":["  File \"/ComfyUI/execution.py\", line 1, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n"]}}`},
		{"slot out of range", `{"images": ["1", 3], "filename_prefix": "x"}`, "", "9",
			`{"type":"exception_during_validation","message":"Exception when validating node","details":"tuple index out of range","extra_info":{"exception_type":"IndexError","traceback":["  File \"/ComfyUI/execution.py\", line 1, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n"]}}`},
		{"inputs not an object", ``, `, "5": {"class_type": "SaveImage", "inputs": [1]}`, "5",
			`{"type":"exception_during_validation","message":"Exception when validating node","details":"'list' object has no attribute 'get'","extra_info":{"exception_type":"AttributeError","traceback":["  File \"/ComfyUI/execution.py\", line 1, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n"]}}`},
		{"not an integer", `{"images": ["2", 0], "filename_prefix": "x"}`, `, "2": {"class_type": "EmptyImage", "inputs": {"width": "wide", "height": 8}}`, "2",
			`{"type":"invalid_input_type","message":"Failed to convert an input value to a INT value","details":"width, wide, invalid literal for int() with base 10: 'wide'","extra_info":{"input_name":"width","input_config":["INT",{"default":512,"min":1,"max":16384}],"received_value":"wide","exception_message":"invalid literal for int() with base 10: 'wide'"}}`},
		{"not a number at all", `{"images": ["2", 0], "filename_prefix": "x"}`, `, "2": {"class_type": "EmptyImage", "inputs": {"width": null, "height": 8}}`, "2",
			`{"type":"invalid_input_type","message":"Failed to convert an input value to a INT value","details":"width, None, int() argument must be a string, a bytes-like object or a real number, not 'NoneType'","extra_info":{"input_name":"width","input_config":["INT",{"default":512,"min":1,"max":16384}],"received_value":null,"exception_message":"int() argument must be a string, a bytes-like object or a real number, not 'NoneType'"}}`},
		{"below min", `{"images": ["2", 0], "filename_prefix": "x"}`, `, "2": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8}}`, "2",
			`{"type":"value_smaller_than_min","message":"Value 0 smaller than min of 1","details":"width","extra_info":{"input_name":"width","input_config":["INT",{"default":512,"min":1,"max":16384}],"received_value":0}}`},
		{"above max, float", `{"images": ["2", 0], "filename_prefix": "x"}`, `, "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "scale": "2.5"}}`, "2",
			`{"type":"value_bigger_than_max","message":"Value 2.5 bigger than max of 2.0","details":"scale","extra_info":{"input_name":"scale","input_config":["FLOAT",{"min":0.5,"max":2.0}],"received_value":2.5}}`},
		{"combo not in list", `{"images": ["2", 0], "filename_prefix": "x"}`, `, "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bogus", "scale": 1}}`, "2",
			`{"type":"value_not_in_list","message":"Value not in list","details":"upscale_method: 'bogus' not in ['nearest-exact', 'bilinear']","extra_info":{"input_name":"upscale_method","input_config":[["nearest-exact","bilinear"],{}],"received_value":"bogus"}}`},
		{"v3 combo not in list", `{"images": ["4", 0], "filename_prefix": "x"}`, `, "3": {"class_type": "Checkpoint", "inputs": {"ckpt_name": "m00.ckpt"}}, "4": {"class_type": "Sampler", "inputs": {"model": ["3", 0], "sampler": "ddim"}}`, "4",
			`{"type":"value_not_in_list","message":"Value not in list","details":"sampler: 'ddim' not in ['euler', 'dpm']","extra_info":{"input_name":"sampler","input_config":["COMBO",{"options":["euler","dpm"]}],"received_value":"ddim"}}`},
		{"combo of more than 20", `{"images": ["4", 0], "filename_prefix": "x"}`, `, "3": {"class_type": "Checkpoint", "inputs": {"ckpt_name": "gone.ckpt"}}, "4": {"class_type": "Sampler", "inputs": {"model": ["3", 0], "sampler": "euler"}}`, "3",
			`{"type":"value_not_in_list","message":"Value not in list","details":"ckpt_name: 'gone.ckpt' not in (list of length 21)","extra_info":{"input_name":"ckpt_name","input_config":null,"received_value":"gone.ckpt"}}`},
	} {
		nodes := `"1": ` + img + tc.extra
		if tc.save != "" {
			nodes += `, "9": {"class_type": "SaveImage", "inputs": ` + tc.save + `}`
		}
		res := Validate(cat, prompt(t, `{`+nodes+`}`), nil)
		require.False(t, res.OK, tc.name)
		output := "9"
		if tc.save == "" {
			output = tc.node
		}
		class := map[string]string{"2": "", "3": "Checkpoint", "4": "Sampler", "5": "SaveImage", "9": "SaveImage"}[tc.node]
		if class == "" {
			class, _ = nodeClass(prompt(t, `{`+nodes+`}`), tc.node)
		}
		var errObj map[string]any
		require.NoError(t, json.Unmarshal([]byte(tc.err), &errObj), tc.name)
		ne, ok := res.NodeErrors.Get(tc.node)
		require.True(t, ok, "%s: node_errors %s", tc.name, asJSON(t, res.NodeErrors))
		c, _ := ne.(pyjson.Object).Get("class_type")
		require.Equal(t, class, c, tc.name)
		require.Equal(t, `{"errors":[`+tc.err+`],"dependent_outputs":["`+output+`"],"class_type":"`+class+`"}`, asJSON(t, ne), tc.name)
		details := ""
		if tc.node == output {
			details = fmt.Sprintf("%s: %s", errObj["message"], errObj["details"])
		}
		require.Equal(t, `{"type":"prompt_outputs_failed_validation","message":"Prompt outputs failed validation","details":`+
			strings.TrimSpace(asJSON(t, details))+`,"extra_info":{}}`, asJSON(t, res.Err), tc.name)
	}
}

// Some outputs valid: the prompt is accepted with the valid ones, and the
// failures are reported in node_errors with every output that depends on
// them.
func TestPartlyValidPromptRunsTheGoodOutputs(t *testing.T) {
	t.Parallel()
	cat := catalog(t)
	p := prompt(t, `{
	  "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}},
	  "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bogus", "scale": 1}},
	  "8": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "a"}},
	  "9": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
	  "10": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}`)
	res := Validate(cat, p, nil)
	require.True(t, res.OK)
	require.Equal(t, []string{"10"}, res.Outputs)
	ne, ok := res.NodeErrors.Get("2")
	require.True(t, ok)
	deps, _ := ne.(pyjson.Object).Get("dependent_outputs")
	require.Equal(t, []any{"8", "9"}, deps)
	require.Len(t, res.NodeErrors, 1, "only the node with errors: %s", asJSON(t, res.NodeErrors))

	// partial_execution_targets picks among the outputs.
	res = Validate(cat, prompt(t, `{`+goodNodes+`}`), []string{"10"})
	require.True(t, res.OK)
	require.Equal(t, []string{"10"}, res.Outputs)
	res = Validate(cat, prompt(t, `{`+goodNodes+`}`), nil)
	require.Equal(t, []string{"9", "10"}, res.Outputs, "the prompt's node order")
}

// Widget values are coerced in place as ComfyUI does (int("20"),
// float("0.75"), str(5), bool), and {"__value__": [...]} is unwrapped, so
// /queue and /history show the coerced prompt.
func TestCoercionInPlace(t *testing.T) {
	t.Parallel()
	cat := catalog(t)
	p := prompt(t, `{
	  "1": {"class_type": "EmptyImage", "inputs": {"width": "20", "height": 8.9}},
	  "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "scale": "0.75", "label": 5, "sharp": 1}},
	  "9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": {"__value__": "wrapped"}}}}`)
	res := Validate(cat, p, nil)
	require.True(t, res.OK, asJSON(t, res.Err))
	require.Equal(t, `{"1":{"class_type":"EmptyImage","inputs":{"width":20,"height":8}},`+
		`"2":{"class_type":"ImageScale","inputs":{"image":["1",0],"upscale_method":"bilinear","scale":0.75,"label":"5","sharp":true}},`+
		`"9":{"class_type":"SaveImage","inputs":{"images":["2",0],"filename_prefix":"wrapped"}}}`, asJSON(t, p))
}

// A cycle: every node on it gets dependency_cycle with the path.
func TestDependencyCycle(t *testing.T) {
	t.Parallel()
	cat := catalog(t)
	res := Validate(cat, prompt(t, `{
	  "2": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "bilinear", "scale": 1}},
	  "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "bilinear", "scale": 1}},
	  "9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}`), nil)
	require.False(t, res.OK)
	for _, id := range []string{"2", "3"} {
		ne, ok := res.NodeErrors.Get(id)
		require.True(t, ok, id)
		errs, _ := ne.(pyjson.Object).Get("errors")
		e := errs.([]any)[0].(pyjson.Object)
		typ, _ := e.Str("type")
		details, _ := e.Str("details")
		require.Equal(t, "dependency_cycle", typ)
		require.Equal(t, "2 (ImageScale) -> 3 (ImageScale) -> 2 (ImageScale)", details)
	}
}

// VALIDATE_INPUTS (LoadImage's file check, say) replaces the built-in
// checks of the inputs it names and reports custom_validation_failed.
func TestCustomValidation(t *testing.T) {
	t.Parallel()
	cat := mapCatalog{
		"LoadImage": &NodeDef{Name: "LoadImage", Outputs: []string{"IMAGE", "MASK"},
			Required:       []Input{{Name: "image", Type: "COMBO", Combo: []string{"a.png"}, Config: []any{[]any{"a.png"}, pyjson.Object{{"image_upload", true}}}}},
			ValidateInputs: []string{"image"},
			Validate: func(args pyjson.Object) (bool, string) {
				v, _ := args.Str("image")
				if v == "uploaded.png" {
					return true, ""
				}
				return false, "Invalid image file: " + v
			}},
		"PreviewImage": &NodeDef{Name: "PreviewImage", OutputNode: true, Required: []Input{{Name: "images", Type: "IMAGE", Config: []any{"IMAGE"}}}},
	}
	p := func(file string) pyjson.Object {
		return prompt(t, `{"1": {"class_type": "LoadImage", "inputs": {"image": "`+file+`"}},
		  "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}`)
	}
	require.True(t, Validate(cat, p("uploaded.png"), nil).OK, "not in the combo, but VALIDATE_INPUTS says yes")
	res := Validate(cat, p("nope.png"), nil)
	require.False(t, res.OK)
	ne, _ := res.NodeErrors.Get("1")
	require.Equal(t, `{"errors":[{"type":"custom_validation_failed","message":"Custom validation failed for node","details":"image - Invalid image file: nope.png","extra_info":{"input_name":"image"}}],"dependent_outputs":["2"],"class_type":"LoadImage"}`,
		asJSON(t, ne))
}

type mapCatalog map[string]*NodeDef

func (m mapCatalog) Lookup(class string) (*NodeDef, bool) {
	d, ok := m[class]
	return d, ok
}

// Upload widgets are recognised in both object_info spellings.
func TestUploadKind(t *testing.T) {
	t.Parallel()
	oi, err := FromObjectInfo([]byte(`{
	 "A": {"input": {"required": {"image": [["x.png"], {"image_upload": true}], "n": ["INT", {}]}}},
	 "B": {"input": {"required": {"file": ["COMBO", {"options": [], "video_upload": true}]}}},
	 "C": {"input": {"optional": {"audio": [[], {"audio_upload": true}]}}},
	 "D": {"input": {"required": {"mesh": ["COMBO", {"upload": "3d"}]}}}}`))
	require.NoError(t, err)
	kind := func(class string, optional bool) []string {
		d, ok := oi.Lookup(class)
		require.True(t, ok)
		ins := d.Required
		if optional {
			ins = d.Optional
		}
		var out []string
		for _, in := range ins {
			out = append(out, in.UploadKind())
		}
		return out
	}
	require.Equal(t, []string{"image", ""}, kind("A", false))
	require.Equal(t, []string{"video"}, kind("B", false))
	require.Equal(t, []string{"audio"}, kind("C", true))
	require.Equal(t, []string{"3d"}, kind("D", false))
	require.Equal(t, []string{"A", "B", "C", "D"}, oi.Classes())
}

// nodeClass is the class_type of prompt[id] (test helper).
func nodeClass(p pyjson.Object, id string) (string, bool) {
	node, ok := NodeObject(p, id)
	if !ok {
		return "", false
	}
	return node.Str("class_type")
}
