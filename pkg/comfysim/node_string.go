package comfysim

// The string and primitive nodes of ComfyUI 0.3.64 that workflows use to
// compute a text: PrimitiveString and PrimitiveStringMultiline
// (comfy_extras/nodes_primitive.py) and StringConcatenate
// (comfy_extras/nodes_string.py). All three are v3-schema nodes, so their
// object_info has the v3 layout (nodeDef.v3): output_tooltips with a null
// per untipped output, and deprecated, experimental and api_node always
// present. Atelier's agent inserts a StringConcatenate in front of a
// filename_prefix another node computes, to put the participant's folder
// in front of it at run time.

func stringNodeDefs() []*nodeDef {
	return []*nodeDef{
		{
			name: "PrimitiveString", displayName: "String", category: "utils/primitive",
			module:   "comfy_extras.nodes_primitive",
			required: []inputSpec{{name: "value", typ: "STRING", opts: object{{"multiline", false}}}},
			outputs:  []string{"STRING"},
			v3:       true,
			run:      runPrimitive,
		},
		{
			name: "PrimitiveStringMultiline", displayName: "String (Multiline)", category: "utils/primitive",
			module:   "comfy_extras.nodes_primitive",
			required: []inputSpec{{name: "value", typ: "STRING", opts: object{{"multiline", true}}}},
			outputs:  []string{"STRING"},
			v3:       true,
			run:      runPrimitive,
		},
		{
			name: "StringConcatenate", displayName: "Concatenate", category: "utils/string",
			module: "comfy_extras.nodes_string",
			required: []inputSpec{
				{name: "string_a", typ: "STRING", opts: object{{"multiline", true}}},
				{name: "string_b", typ: "STRING", opts: object{{"multiline", true}}},
				{name: "delimiter", typ: "STRING", opts: object{{"default", ""}, {"multiline", false}}},
			},
			outputs: []string{"STRING"},
			v3:      true,
			run:     runStringConcatenate,
		},
	}
}

// runPrimitive returns its value.
func runPrimitive(nc *nodeCtx) ([]any, object, error) {
	return []any{nc.strArg("value")}, nil, nil
}

// runStringConcatenate is delimiter.join((string_a, string_b)).
func runStringConcatenate(nc *nodeCtx) ([]any, object, error) {
	return []any{nc.strArg("string_a") + nc.strArg("delimiter") + nc.strArg("string_b")}, nil, nil
}
