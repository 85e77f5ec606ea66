package comfyvalidate

import (
	"encoding/json"
	"fmt"

	"github.com/atelier-run/atelier/pkg/pyjson"
)

// Catalog resolves node classes for validation. The simulator implements it
// over its node table; the proxy over a pool's object_info (FromObjectInfo).
type Catalog interface {
	// Lookup returns the class's definition, false for an unknown class.
	Lookup(class string) (*NodeDef, bool)
}

// NodeDef is what validation needs of a node class: its inputs as
// object_info lists them, its output types and whether it is an output node.
type NodeDef struct {
	Name               string
	Required, Optional []Input
	Outputs            []string
	OutputNode         bool
	// ValidateInputs lists the arguments of the class's VALIDATE_INPUTS;
	// those inputs skip the built-in min/max/combo checks, as in ComfyUI.
	ValidateInputs []string
	// Validate is VALIDATE_INPUTS: it gets the constant inputs named in
	// ValidateInputs and returns false with a message to refuse them.
	Validate func(args pyjson.Object) (ok bool, msg string)
}

// input returns the spec of a required or optional input and its category.
func (d *NodeDef) input(name string) (Input, string, bool) {
	for _, in := range d.Required {
		if in.Name == name {
			return in, "required", true
		}
	}
	for _, in := range d.Optional {
		if in.Name == name {
			return in, "optional", true
		}
	}
	return Input{}, "", false
}

// Input is one entry of a node's INPUT_TYPES.
type Input struct {
	Name string
	// Type is the type name ("INT", "IMAGE" …); for a combo the first
	// element of the config is the option list and Type is "COMBO".
	Type string
	// Combo is the option list of a combo input, nil otherwise.
	Combo []string
	// Config is the (type, options) pair as object_info shows it, which
	// errors echo as input_config.
	Config []any
	// Opts is the options dict (min, max, image_upload …), nil when absent.
	Opts pyjson.Object
}

// IsCombo reports whether the input is a list-of-options input.
func (in Input) IsCombo() bool { return in.Combo != nil }

// extra is the options dict as validation sees it (empty when absent).
func (in Input) extra() pyjson.Object {
	if in.Opts == nil {
		return pyjson.Object{}
	}
	return in.Opts
}

// UploadKind returns "image", "video" or "audio" when the input's options
// flag it as an upload widget (image_upload, video_upload, audio_upload,
// or v3's upload: "image"), else "".
func (in Input) UploadKind() string {
	for _, k := range []string{"image", "video", "audio"} {
		if v, ok := in.Opts.Get(k + "_upload"); ok && pyjson.Truthy(v) {
			return k
		}
	}
	if v, ok := in.Opts.Str("upload"); ok && v != "" {
		return v
	}
	return ""
}

// ObjectInfo is a Catalog over a ComfyUI object_info document.
type ObjectInfo struct {
	defs  map[string]*NodeDef
	order []string
}

// Lookup implements Catalog.
func (o *ObjectInfo) Lookup(class string) (*NodeDef, bool) {
	d, ok := o.defs[class]
	return d, ok
}

// Classes lists the class names in object_info order.
func (o *ObjectInfo) Classes() []string { return o.order }

// FromObjectInfo builds a Catalog from GET /object_info's body. An entry that
// cannot be read is skipped, as ComfyUI omits a node whose definition fails.
func FromObjectInfo(raw []byte) (*ObjectInfo, error) {
	v, err := pyjson.Decode(raw)
	if err != nil {
		return nil, fmt.Errorf("comfyvalidate: decode object_info: %w", err)
	}
	top, ok := v.(pyjson.Object)
	if !ok {
		return nil, fmt.Errorf("comfyvalidate: object_info is a %s, not an object", pyjson.TypeName(v))
	}
	oi := &ObjectInfo{defs: make(map[string]*NodeDef, len(top))}
	for _, m := range top {
		entry, ok := m.Value.(pyjson.Object)
		if !ok {
			continue
		}
		d := &NodeDef{Name: m.Key}
		if v, ok := entry.Get("output_node"); ok {
			d.OutputNode = pyjson.Truthy(v)
		}
		if outs, ok := entry.Get("output"); ok {
			list, _ := outs.([]any)
			for _, o := range list {
				// A combo output is a list of options; its type name does
				// not matter for link checks beyond "not equal".
				if s, ok := o.(string); ok {
					d.Outputs = append(d.Outputs, s)
				} else {
					d.Outputs = append(d.Outputs, "COMBO")
				}
			}
		}
		if in, ok := entry.Get("input"); ok {
			if sections, ok := in.(pyjson.Object); ok {
				d.Required = inputsOf(sections, "required")
				d.Optional = inputsOf(sections, "optional")
			}
		}
		oi.defs[m.Key] = d
		oi.order = append(oi.order, m.Key)
	}
	return oi, nil
}

// inputsOf reads one section (required, optional) of an object_info input
// dict.
func inputsOf(sections pyjson.Object, key string) []Input {
	v, ok := sections.Get(key)
	if !ok {
		return nil
	}
	sec, ok := v.(pyjson.Object)
	if !ok {
		return nil
	}
	out := make([]Input, 0, len(sec))
	for _, m := range sec {
		cfg, _ := m.Value.([]any)
		in := Input{Name: m.Key, Config: cfg}
		if len(cfg) > 1 {
			in.Opts, _ = cfg[1].(pyjson.Object)
		}
		if len(cfg) > 0 {
			switch t := cfg[0].(type) {
			case string:
				in.Type = t
				if t == "COMBO" {
					// v3 combos: ["COMBO", {"options": [...]}].
					in.Combo = []string{}
					if opts, ok := in.Opts.Get("options"); ok {
						in.Combo = stringList(opts)
					}
				}
			case []any:
				in.Type = "COMBO"
				in.Combo = stringList(t)
			}
		}
		out = append(out, in)
	}
	return out
}

func stringList(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, e := range list {
		out = append(out, pyjson.Str(e))
	}
	return out
}

// RawOf returns a decoded value as JSON (for callers that keep results as
// json.RawMessage).
func RawOf(v any) json.RawMessage {
	b, err := pyjson.MarshalNoEscape(v)
	if err != nil {
		return json.RawMessage("null")
	}
	return b
}
