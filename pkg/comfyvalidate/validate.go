package comfyvalidate

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	"github.com/atelier-run/atelier/pkg/pyjson"
)

// This file reproduces execution.py's validate_prompt / validate_inputs:
// the same error types, messages, details strings and extra_info keys, and
// the same in-place coercion of widget values ("20" -> 20) that later shows
// up in /queue and /history. The simulator and the proxy both validate with
// it, so the proxy's refusals are the simulator's (and ComfyUI's).

// PyException stands for a Python exception raised during validation, which
// ComfyUI turns into exception_during_(inner_)validation errors.
type PyException struct {
	Type string // full_type_name, e.g. "KeyError"
	Msg  string // str(ex)
}

func (e *PyException) Error() string { return e.Type + ": " + e.Msg }

func keyError(key any) *PyException { return &PyException{"KeyError", pyjson.Repr(key)} }

// fakeTraceback is a plausible traceback.format_tb() list; clients only
// display it.
func fakeTraceback(fn, line string) []any {
	return []any{fmt.Sprintf("  File \"/ComfyUI/execution.py\", line 1, in %s\n    %s\n", fn, line)}
}

// nodeErr builds one entry of node_errors[*].errors.
func nodeErr(typ, message, details string, extra pyjson.Object) pyjson.Object {
	if extra == nil {
		extra = pyjson.Object{}
	}
	return pyjson.Object{{"type", typ}, {"message", message}, {"details", details}, {"extra_info", extra}}
}

// TopErr builds the top-level "error" Object of a 400 answer.
func TopErr(typ, message, details string) pyjson.Object {
	return nodeErr(typ, message, details, nil)
}

type validated struct {
	ok      bool
	reasons []pyjson.Object
}

type validator struct {
	cat      Catalog
	prompt   pyjson.Object
	done     map[string]validated
	order    []string // insertion order of done, as Python's dict
	visiting []string
}

func (v *validator) record(id string, r validated) validated {
	if _, ok := v.done[id]; !ok {
		v.order = append(v.order, id)
	}
	v.done[id] = r
	return r
}

// Result is validate_prompt's return value.
type Result struct {
	// OK is true when at least one output validated: the prompt is queued.
	OK bool
	// Err is the top-level error object of a 400 answer when !OK.
	Err pyjson.Object
	// Outputs are outputs_to_execute, in the prompt's node order.
	Outputs []string
	// NodeErrors is node_errors (also non-empty on success when some outputs
	// failed).
	NodeErrors pyjson.Object
}

// NodeObject returns prompt[id] as an Object.
func NodeObject(prompt pyjson.Object, id string) (pyjson.Object, bool) {
	v, ok := prompt.Get(id)
	if !ok {
		return nil, false
	}
	o, ok := v.(pyjson.Object)
	return o, ok
}

// Options select version-dependent behaviour of Validate.
type Options struct {
	// MissingNodeType reports unknown or missing classes as newer ComfyUI
	// does (error type missing_node_type, with the node's title and
	// extra_info {node_id, class_type, node_title}) instead of the
	// baseline's invalid_prompt.
	MissingNodeType bool
}

// Validate validates (and coerces in place) an API-format prompt, as
// ComfyUI 0.3.64's validate_prompt. partial is nil when
// partial_execution_targets was absent or null.
func Validate(cat Catalog, prompt pyjson.Object, partial []string) Result {
	return ValidateWith(cat, prompt, partial, Options{})
}

// ValidateWith is Validate with version options.
func ValidateWith(cat Catalog, prompt pyjson.Object, partial []string, opts Options) Result {
	var outputs []string
	for _, m := range prompt {
		node, isObj := m.Value.(pyjson.Object)
		classV, hasClass := node.Get("class_type")
		if !isObj || !hasClass {
			if opts.MissingNodeType {
				return Result{Err: missingNodeType(m.Key, node, nil)}
			}
			return Result{Err: TopErr("invalid_prompt",
				"Cannot execute because a node is missing the class_type property.",
				fmt.Sprintf("Node ID '#%s'", m.Key))}
		}
		def, ok := lookupClass(cat, classV)
		if !ok {
			if opts.MissingNodeType {
				return Result{Err: missingNodeType(m.Key, node, classV)}
			}
			return Result{Err: TopErr("invalid_prompt",
				fmt.Sprintf("Cannot execute because node %s does not exist.", pyjson.Str(classV)),
				fmt.Sprintf("Node ID '#%s'", m.Key))}
		}
		if def.OutputNode && (partial == nil || contains(partial, m.Key)) {
			outputs = append(outputs, m.Key)
		}
	}
	if len(outputs) == 0 {
		return Result{Err: TopErr("prompt_no_outputs", "Prompt has no outputs", "")}
	}

	v := &validator{cat: cat, prompt: prompt, done: map[string]validated{}}
	var good []string
	type failed struct {
		output  string
		reasons []pyjson.Object
	}
	var failures []failed
	nodeErrors := pyjson.Object{}
	for _, o := range outputs {
		r, exc := v.validateInputs(o)
		if exc != nil {
			r = v.record(o, validated{false, []pyjson.Object{nodeErr("exception_during_validation",
				"Exception when validating node", exc.Msg, pyjson.Object{
					{"exception_type", exc.Type},
					{"traceback", fakeTraceback("validate_prompt", "m = await validate_inputs(prompt_id, prompt, o, validated)")},
				})}})
		}
		if r.ok {
			good = append(good, o)
			continue
		}
		failures = append(failures, failed{o, r.reasons})
		for _, id := range v.order {
			res := v.done[id]
			if res.ok || len(res.reasons) == 0 {
				continue
			}
			ne, exists := nodeErrors.Get(id)
			if !exists {
				node, _ := NodeObject(prompt, id)
				class, _ := node.Get("class_type")
				reasons := make([]any, len(res.reasons))
				for i, rr := range res.reasons {
					reasons[i] = rr
				}
				ne = pyjson.Object{{"errors", reasons}, {"dependent_outputs", []any{}}, {"class_type", class}}
				nodeErrors = append(nodeErrors, pyjson.Member{id, ne})
			}
			neo := ne.(pyjson.Object)
			deps, _ := neo.Get("dependent_outputs")
			neo.Set("dependent_outputs", append(deps.([]any), o))
			nodeErrors.Set(id, neo)
		}
	}
	if len(good) == 0 {
		// As in ComfyUI, details lists only the reasons attached to the
		// output nodes themselves; upstream failures are in node_errors.
		var lines []string
		for _, f := range failures {
			for _, r := range f.reasons {
				msg, _ := r.Str("message")
				det, _ := r.Str("details")
				lines = append(lines, msg+": "+det)
			}
		}
		return Result{
			Err:        TopErr("prompt_outputs_failed_validation", "Prompt outputs failed validation", strings.Join(lines, "\n")),
			NodeErrors: nodeErrors,
		}
	}
	return Result{OK: true, Outputs: good, NodeErrors: nodeErrors}
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// lookupClass resolves a class_type value to a node definition.
func lookupClass(cat Catalog, v any) (*NodeDef, bool) {
	name, ok := v.(string)
	if !ok {
		return nil, false
	}
	return cat.Lookup(name)
}

// IsLink reports whether v is a link-shaped value (any JSON list counts, as
// isinstance(val, list) in ComfyUI).
func IsLink(v any) ([]any, bool) {
	l, ok := v.([]any)
	return l, ok
}

// validateInputs is validate_inputs(): it returns the node's verdict, or a
// Python-style exception that the caller reports.
func (v *validator) validateInputs(id string) (validated, *PyException) {
	if r, ok := v.done[id]; ok {
		return r, nil
	}
	if i := indexOf(v.visiting, id); i >= 0 {
		path := append(append([]string(nil), v.visiting[i:]...), id)
		parts := make([]string, len(path))
		for j, n := range path {
			node, _ := NodeObject(v.prompt, n)
			class, _ := node.Get("class_type")
			parts[j] = fmt.Sprintf("%s (%s)", n, pyjson.Str(class))
		}
		var cycle []any
		seen := map[string]bool{}
		for _, n := range path {
			if !seen[n] {
				seen[n] = true
				cycle = append(cycle, n)
			}
		}
		for _, n := range cycle {
			v.record(n.(string), validated{false, []pyjson.Object{nodeErr("dependency_cycle", "Dependency cycle detected",
				strings.Join(parts, " -> "), pyjson.Object{{"node_id", n}, {"cycle_nodes", cycle}})}})
		}
		return v.done[id], nil
	}

	node, ok := NodeObject(v.prompt, id)
	if !ok {
		return validated{}, keyError(id)
	}
	inputsV, ok := node.Get("inputs")
	if !ok {
		return validated{}, keyError("inputs")
	}
	inputs, ok := inputsV.(pyjson.Object)
	if !ok {
		return validated{}, &PyException{"AttributeError", fmt.Sprintf("'%s' object has no attribute 'get'", pyjson.TypeName(inputsV))}
	}
	classV, _ := node.Get("class_type")
	def, _ := lookupClass(v.cat, classV)

	var errs []pyjson.Object
	valid := true
	specs := append(append([]Input(nil), def.Required...), def.Optional...)
	for _, spec := range specs {
		x := spec.Name
		_, category, _ := def.input(x)
		idx := inputIndex(inputs, x)
		if idx < 0 {
			if category == "required" {
				errs = append(errs, nodeErr("required_input_missing", "Required input is missing", x, pyjson.Object{{"input_name", x}}))
			}
			continue
		}
		val := inputs[idx].Value
		info := spec.Config
		extra := spec.extra()

		if link, isList := IsLink(val); isList {
			if len(link) != 2 {
				errs = append(errs, nodeErr("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", x,
					pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_value", val}}))
				continue
			}
			oID, isStr := link[0].(string)
			fromNode, exists := NodeObject(v.prompt, oID)
			if !isStr || !exists {
				return validated{}, keyError(link[0])
			}
			fromClassV, _ := fromNode.Get("class_type")
			fromDef, _ := lookupClass(v.cat, fromClassV)
			slot, exc := TupleIndex(link[1], len(fromDef.Outputs))
			if exc != nil {
				return validated{}, exc
			}
			received := fromDef.Outputs[slot]
			if !contains(def.ValidateInputs, "input_types") && !typesCompatible(received, spec) {
				var inputType any = spec.Type
				if spec.IsCombo() {
					inputType = info[0]
				}
				errs = append(errs, nodeErr("return_type_mismatch", "Return type mismatch between linked nodes",
					fmt.Sprintf("%s, received_type(%s) mismatch input_type(%s)", x, received, pyjson.Str(inputType)),
					pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_type", received}, {"linked_node", val}}))
				continue
			}
			v.visiting = append(v.visiting, id)
			r, exc := v.validateInputs(oID)
			v.visiting = v.visiting[:len(v.visiting)-1]
			if exc != nil {
				valid = false
				v.record(oID, validated{false, []pyjson.Object{nodeErr("exception_during_inner_validation",
					"Exception when validating inner node", exc.Msg, pyjson.Object{
						{"input_name", x}, {"input_config", info}, {"exception_message", exc.Msg},
						{"exception_type", exc.Type},
						{"traceback", fakeTraceback("validate_inputs", "r = await validate_inputs(prompt_id, prompt, o_id, validated)")},
						{"linked_node", val},
					})}})
				continue
			}
			if !r.ok {
				valid = false
			}
			continue
		}

		if o, isObj := val.(pyjson.Object); isObj {
			if inner, ok := o.Get("__value__"); ok {
				val = inner
				inputs[idx].Value = val
			}
		}
		coerced, cerr := coerce(spec.Type, val)
		if cerr != "" {
			errs = append(errs, nodeErr("invalid_input_type",
				fmt.Sprintf("Failed to convert an input value to a %s value", spec.Type),
				fmt.Sprintf("%s, %s, %s", x, pyjson.Str(val), cerr),
				pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_value", val}, {"exception_message", cerr}}))
			continue
		}
		if coerced != nil {
			val = coerced
			inputs[idx].Value = val
		}

		if contains(def.ValidateInputs, x) {
			continue
		}
		if n, isNum := val.(json.Number); isNum {
			if minV, ok := extra.Get("min"); ok {
				if pyjson.NumberRat(n).Cmp(pyjson.NumberRat(minV.(json.Number))) < 0 {
					errs = append(errs, nodeErr("value_smaller_than_min",
						fmt.Sprintf("Value %s smaller than min of %s", pyjson.Str(val), pyjson.Str(minV)), x,
						pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_value", val}}))
					continue
				}
			}
			if maxV, ok := extra.Get("max"); ok {
				if pyjson.NumberRat(n).Cmp(pyjson.NumberRat(maxV.(json.Number))) > 0 {
					errs = append(errs, nodeErr("value_bigger_than_max",
						fmt.Sprintf("Value %s bigger than max of %s", pyjson.Str(val), pyjson.Str(maxV)), x,
						pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_value", val}}))
					continue
				}
			}
		}
		if spec.IsCombo() {
			options := spec.Combo
			if sv, isStr := val.(string); !isStr || !contains(options, sv) {
				var inputConfig any = info
				listInfo := pyjson.Repr(options)
				// Gigantic lists (scanned model files) are not sent back.
				if len(options) > 20 {
					listInfo = fmt.Sprintf("(list of length %d)", len(options))
					inputConfig = nil
				}
				errs = append(errs, nodeErr("value_not_in_list", "Value not in list",
					fmt.Sprintf("%s: %s not in %s", x, pyjson.Repr(val), listInfo),
					pyjson.Object{{"input_name", x}, {"input_config", inputConfig}, {"received_value", val}}))
				continue
			}
		}
	}

	if def.Validate != nil {
		// VALIDATE_INPUTS receives only constant inputs it names.
		args := pyjson.Object{}
		for _, name := range def.ValidateInputs {
			if i := inputIndex(inputs, name); i >= 0 {
				if _, isList := IsLink(inputs[i].Value); !isList {
					args = append(args, inputs[i])
				}
			}
		}
		if len(args) == len(def.ValidateInputs) {
			if ok, msg := def.Validate(args); !ok {
				for _, a := range args {
					details := a.Key
					if msg != "" {
						details += " - " + msg
					}
					errs = append(errs, nodeErr("custom_validation_failed", "Custom validation failed for node", details,
						pyjson.Object{{"input_name", a.Key}}))
				}
			}
		}
	}

	prev, seen := v.done[id]
	r := validated{ok: valid && len(errs) == 0, reasons: errs}
	if seen { // a cycle already recorded an error on this node
		r.ok = false
		r.reasons = append(prev.reasons, errs...)
	}
	return v.record(id, r), nil
}

func indexOf(list []string, s string) int {
	for i, e := range list {
		if e == s {
			return i
		}
	}
	return -1
}

// inputIndex returns the position of name in a node's inputs, -1 if absent.
func inputIndex(inputs pyjson.Object, name string) int {
	for i, m := range inputs {
		if m.Key == name {
			return i
		}
	}
	return -1
}

// TupleIndex is Python's RETURN_TYPES[idx] for a JSON value.
func TupleIndex(v any, n int) (int, *PyException) {
	num, ok := v.(json.Number)
	if !ok || !pyjson.NumberIsInt(num) {
		if b, isBool := v.(bool); isBool { // bool is an int in Python
			if b {
				num = "1"
			} else {
				num = "0"
			}
		} else {
			return 0, &PyException{"TypeError", fmt.Sprintf("tuple indices must be integers or slices, not %s", pyjson.TypeName(v))}
		}
	}
	i, err := strconv.Atoi(string(num))
	if err == nil && i < 0 {
		i += n
	}
	if err != nil || i < 0 || i >= n {
		return 0, &PyException{"IndexError", "tuple index out of range"}
	}
	return i, nil
}

// typesCompatible is validate_node_input(received_type, input_type).
func typesCompatible(received string, spec Input) bool {
	if spec.IsCombo() {
		// A list input type never equals a string type.
		return false
	}
	if received == spec.Type {
		return true
	}
	split := func(t string) map[string]bool {
		m := map[string]bool{}
		for _, p := range strings.Split(t, ",") {
			m[strings.TrimSpace(p)] = true
		}
		return m
	}
	a, b := split(received), split(spec.Type)
	if a["*"] || b["*"] {
		return true
	}
	for t := range a {
		if b[t] {
			return true
		}
	}
	return false
}

// coerce converts a widget value as int()/float()/str()/bool() would for
// INT/FLOAT/STRING/BOOLEAN inputs. It returns nil when the input type does
// not coerce, or the Python exception message on failure.
func coerce(typ string, val any) (any, string) {
	switch typ {
	case "INT":
		i, msg := pyInt(val)
		if msg != "" {
			return nil, msg
		}
		return json.Number(i.String()), ""
	case "FLOAT":
		f, msg := PyFloatOf(val)
		if msg != "" {
			return nil, msg
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			// Keep the original spelling; JSON cannot carry nan/inf.
			return nil, ""
		}
		return json.Number(pyjson.FloatRepr(f)), ""
	case "STRING":
		return pyjson.Str(val), ""
	case "BOOLEAN":
		return pyjson.Truthy(val), ""
	}
	return nil, ""
}

// pyInt is Python's int(val).
func pyInt(val any) (*big.Int, string) {
	switch t := val.(type) {
	case bool:
		if t {
			return big.NewInt(1), ""
		}
		return big.NewInt(0), ""
	case json.Number:
		if pyjson.NumberIsInt(t) {
			i, _ := new(big.Int).SetString(string(t), 10)
			return i, ""
		}
		f := pyjson.NumberFloat(t)
		if math.IsInf(f, 0) {
			return nil, "cannot convert float infinity to integer"
		}
		i, _ := new(big.Float).SetFloat64(math.Trunc(f)).Int(nil)
		return i, ""
	case string:
		s := strings.ReplaceAll(strings.TrimSpace(t), "_", "")
		i, ok := new(big.Int).SetString(s, 10)
		if !ok || strings.Contains(t, "__") || strings.HasPrefix(strings.TrimSpace(t), "_") {
			return nil, fmt.Sprintf("invalid literal for int() with base 10: %s", pyjson.StrRepr(t))
		}
		return i, ""
	default:
		return nil, fmt.Sprintf("int() argument must be a string, a bytes-like object or a real number, not '%s'", pyjson.TypeName(val))
	}
}

// PyFloatOf is Python's float(val).
func PyFloatOf(val any) (float64, string) {
	switch t := val.(type) {
	case bool:
		if t {
			return 1, ""
		}
		return 0, ""
	case json.Number:
		return pyjson.NumberFloat(t), ""
	case string:
		s := strings.ToLower(strings.TrimSpace(t))
		switch strings.TrimLeft(s, "+-") {
		case "inf", "infinity", "nan":
			f, _ := strconv.ParseFloat(s, 64)
			return f, ""
		}
		f, err := strconv.ParseFloat(strings.ReplaceAll(s, "_", ""), 64)
		if err != nil || s == "" || strings.HasPrefix(s, "0x") {
			return 0, fmt.Sprintf("could not convert string to float: %s", pyjson.StrRepr(t))
		}
		return f, ""
	default:
		return 0, fmt.Sprintf("float() argument must be a string or a real number, not '%s'", pyjson.TypeName(val))
	}
}

// missingNodeType is newer ComfyUI's error for a node whose class is
// missing or unknown: the message names the node by its title, which is
// what the user sees on the canvas.
func missingNodeType(id string, node pyjson.Object, class any) pyjson.Object {
	title := ""
	if meta, ok := node.Get("_meta"); ok {
		if mo, ok := meta.(pyjson.Object); ok {
			title, _ = mo.Str("title")
		}
	}
	if title == "" && class != nil {
		title = pyjson.Str(class)
	}
	if title == "" {
		title = "#" + id
	}
	msg := fmt.Sprintf("Node '%s' not found. The custom node may not be installed.", title)
	if class == nil {
		msg = fmt.Sprintf("Node '%s' has no class_type. The workflow may be corrupted or a custom node is missing.", title)
	}
	e := TopErr("missing_node_type", msg, fmt.Sprintf("Node ID '#%s'", id))
	e.Set("extra_info", pyjson.Object{{"node_id", id}, {"class_type", class}, {"node_title", title}})
	return e
}
