package comfysim

import (
	"github.com/atelier-run/atelier/pkg/comfyvalidate"
)

// Validation is execution.py's validate_prompt, shared with the proxy in
// pkg/comfyvalidate; the simulator supplies its node table as the catalog,
// with LoadImage's VALIDATE_INPUTS.

// validationResult is validate_prompt's return value.
type validationResult = comfyvalidate.Result

// simCatalog resolves classes from the node table, rendering combos (model
// files, input images) at validation time as ComfyUI does.
type simCatalog struct{ s *Server }

func (c simCatalog) Lookup(class string) (*comfyvalidate.NodeDef, bool) {
	d, ok := c.s.nodes[class]
	if !ok {
		return nil, false
	}
	return d.validateDef(c.s), true
}

// validateDef is the node's definition as validation sees it.
func (d *nodeDef) validateDef(s *Server) *comfyvalidate.NodeDef {
	inputs := func(specs []inputSpec) []comfyvalidate.Input {
		if specs == nil {
			return nil
		}
		out := make([]comfyvalidate.Input, len(specs))
		for i, in := range specs {
			vi := comfyvalidate.Input{Name: in.name, Type: in.typ, Config: in.config(s), Opts: in.opts}
			if in.isCombo() {
				vi.Type = "COMBO"
				vi.Combo = in.combo(s)
				if vi.Combo == nil {
					vi.Combo = []string{}
				}
			}
			out[i] = vi
		}
		return out
	}
	vd := &comfyvalidate.NodeDef{
		Name:           d.name,
		Required:       inputs(d.required),
		Optional:       inputs(d.optional),
		Outputs:        d.outputs,
		OutputNode:     d.outputNode,
		ValidateInputs: d.validateInputs,
	}
	if d.validate != nil {
		vd.Validate = func(args object) (bool, string) { return d.validate(s, args) }
	}
	return vd
}

// validatePrompt validates (and coerces in place) an API-format prompt.
// partial is nil when partial_execution_targets was absent or null.
func (s *Server) validatePrompt(prompt object, partial []string) validationResult {
	return comfyvalidate.ValidateWith(simCatalog{s}, prompt, partial,
		comfyvalidate.Options{MissingNodeType: s.cfg.MissingNodeType})
}

// lookupClass resolves a class_type value to a node definition.
func (s *Server) lookupClass(v any) (*nodeDef, bool) {
	name, ok := v.(string)
	if !ok {
		return nil, false
	}
	d, ok := s.nodes[name]
	return d, ok
}

func pyFloatOf(v any) (float64, string) { return comfyvalidate.PyFloatOf(v) }

func nodeObject(prompt object, id string) (object, bool) { return comfyvalidate.NodeObject(prompt, id) }
func isLink(v any) ([]any, bool)                         { return comfyvalidate.IsLink(v) }
func topErr(typ, message, details string) object         { return comfyvalidate.TopErr(typ, message, details) }
func tupleIndex(v any, n int) (int, *comfyvalidate.PyException) {
	return comfyvalidate.TupleIndex(v, n)
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}
