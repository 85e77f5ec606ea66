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
	outputs, err := outputNodes(cat, prompt, partial, opts)
	if err != nil {
		return Result{Err: err}
	}
	v := &validator{cat: cat, prompt: prompt, done: map[string]validated{}}
	var good []string
	var failures []validated
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
		failures = append(failures, r)
		v.addNodeErrors(&nodeErrors, o)
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

// outputNodes are the prompt's output nodes that run (all, or those in
// partial); the error is the prompt's top-level error: a node without a
// known class_type, or no outputs at all.
func outputNodes(cat Catalog, prompt pyjson.Object, partial []string, opts Options) ([]string, pyjson.Object) {
	var outputs []string
	for _, m := range prompt {
		node, isObj := m.Value.(pyjson.Object)
		classV, hasClass := node.Get("class_type")
		if !isObj || !hasClass {
			if opts.MissingNodeType {
				return nil, missingNodeType(m.Key, node, nil)
			}
			return nil, TopErr("invalid_prompt",
				"Cannot execute because a node is missing the class_type property.",
				fmt.Sprintf("Node ID '#%s'", m.Key))
		}
		def, ok := lookupClass(cat, classV)
		if !ok {
			if opts.MissingNodeType {
				return nil, missingNodeType(m.Key, node, classV)
			}
			return nil, TopErr("invalid_prompt",
				fmt.Sprintf("Cannot execute because node %s does not exist.", pyjson.Str(classV)),
				fmt.Sprintf("Node ID '#%s'", m.Key))
		}
		if def.OutputNode && (partial == nil || contains(partial, m.Key)) {
			outputs = append(outputs, m.Key)
		}
	}
	if len(outputs) == 0 {
		return nil, TopErr("prompt_no_outputs", "Prompt has no outputs", "")
	}
	return outputs, nil
}

// addNodeErrors adds the failed nodes validated so far to nodeErrors
// (node id → errors, dependent_outputs, class_type), output o among the
// outputs that depend on each.
func (v *validator) addNodeErrors(nodeErrors *pyjson.Object, o string) {
	for _, id := range v.order {
		res := v.done[id]
		if res.ok || len(res.reasons) == 0 {
			continue
		}
		ne, exists := nodeErrors.Get(id)
		if !exists {
			node, _ := NodeObject(v.prompt, id)
			class, _ := node.Get("class_type")
			reasons := make([]any, len(res.reasons))
			for i, rr := range res.reasons {
				reasons[i] = rr
			}
			ne = pyjson.Object{{"errors", reasons}, {"dependent_outputs", []any{}}, {"class_type", class}}
			*nodeErrors = append(*nodeErrors, pyjson.Member{id, ne})
		}
		neo := ne.(pyjson.Object)
		deps, _ := neo.Get("dependent_outputs")
		neo.Set("dependent_outputs", append(deps.([]any), o))
		nodeErrors.Set(id, neo)
	}
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
		return v.recordCycle(id, append(append([]string(nil), v.visiting[i:]...), id)), nil
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
		if link, isList := IsLink(inputs[idx].Value); isList {
			e, linkedOK, exc := v.checkLink(id, def, spec, link)
			if exc != nil {
				return validated{}, exc
			}
			if e != nil {
				errs = append(errs, e)
			}
			valid = valid && linkedOK
			continue
		}
		if e := checkValue(def, spec, inputs, idx); e != nil {
			errs = append(errs, e)
		}
	}
	errs = append(errs, customValidation(def, inputs)...)

	prev, seen := v.done[id]
	r := validated{ok: valid && len(errs) == 0, reasons: errs}
	if seen { // a cycle already recorded an error on this node
		r.ok = false
		r.reasons = append(prev.reasons, errs...)
	}
	return v.record(id, r), nil
}

// recordCycle records a dependency_cycle error on every node of path (the
// nodes being visited from the first visit of id, then id again) and
// returns id's verdict.
func (v *validator) recordCycle(id string, path []string) validated {
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
	return v.done[id]
}

// checkLink validates a linked input of node id: the link's shape and
// types, then the linked node, recursively. It returns the input's error,
// if any; linkedOK is false when the linked node failed validation (its
// own errors are recorded on it). exc is an exception validate_inputs
// raises.
func (v *validator) checkLink(id string, def *NodeDef, spec Input, link []any) (e pyjson.Object, linkedOK bool, exc *PyException) {
	x, info, val := spec.Name, spec.Config, any(link)
	if len(link) != 2 {
		return nodeErr("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", x,
			pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_value", val}}), true, nil
	}
	oID, isStr := link[0].(string)
	fromNode, exists := NodeObject(v.prompt, oID)
	if !isStr || !exists {
		return nil, false, keyError(link[0])
	}
	fromClassV, _ := fromNode.Get("class_type")
	fromDef, _ := lookupClass(v.cat, fromClassV)
	slot, exc := TupleIndex(link[1], len(fromDef.Outputs))
	if exc != nil {
		return nil, false, exc
	}
	received := fromDef.Outputs[slot]
	if !contains(def.ValidateInputs, "input_types") && !typesCompatible(received, spec) {
		var inputType any = spec.Type
		if spec.IsCombo() {
			inputType = info[0]
		}
		return nodeErr("return_type_mismatch", "Return type mismatch between linked nodes",
			fmt.Sprintf("%s, received_type(%s) mismatch input_type(%s)", x, received, pyjson.Str(inputType)),
			pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_type", received}, {"linked_node", val}}), true, nil
	}
	v.visiting = append(v.visiting, id)
	r, exc := v.validateInputs(oID)
	v.visiting = v.visiting[:len(v.visiting)-1]
	if exc != nil {
		v.record(oID, validated{false, []pyjson.Object{nodeErr("exception_during_inner_validation",
			"Exception when validating inner node", exc.Msg, pyjson.Object{
				{"input_name", x}, {"input_config", info}, {"exception_message", exc.Msg},
				{"exception_type", exc.Type},
				{"traceback", fakeTraceback("validate_inputs", "r = await validate_inputs(prompt_id, prompt, o_id, validated)")},
				{"linked_node", val},
			})}})
		return nil, false, nil
	}
	return nil, r.ok, nil
}

// checkValue validates the constant input inputs[idx] against spec: it
// unwraps {"__value__": v}, coerces the value to the input's type in place
// and checks min, max and the combo's options. It returns the input's
// error, or nil.
func checkValue(def *NodeDef, spec Input, inputs pyjson.Object, idx int) pyjson.Object {
	x, info := spec.Name, spec.Config
	val := inputs[idx].Value
	if o, isObj := val.(pyjson.Object); isObj {
		if inner, ok := o.Get("__value__"); ok {
			val = inner
			inputs[idx].Value = val
		}
	}
	coerced, cerr := coerce(spec.Type, val)
	if cerr != "" {
		return nodeErr("invalid_input_type",
			fmt.Sprintf("Failed to convert an input value to a %s value", spec.Type),
			fmt.Sprintf("%s, %s, %s", x, pyjson.Str(val), cerr),
			pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_value", val}, {"exception_message", cerr}})
	}
	if coerced != nil {
		val = coerced
		inputs[idx].Value = val
	}
	if contains(def.ValidateInputs, x) {
		return nil
	}
	if e := checkRange(spec, val); e != nil {
		return e
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
			return nodeErr("value_not_in_list", "Value not in list",
				fmt.Sprintf("%s: %s not in %s", x, pyjson.Repr(val), listInfo),
				pyjson.Object{{"input_name", x}, {"input_config", inputConfig}, {"received_value", val}})
		}
	}
	return nil
}

// checkRange checks a number against the input's min and max.
func checkRange(spec Input, val any) pyjson.Object {
	n, isNum := val.(json.Number)
	if !isNum {
		return nil
	}
	x, info, extra := spec.Name, spec.Config, spec.extra()
	if minV, ok := extra.Get("min"); ok {
		if pyjson.NumberRat(n).Cmp(pyjson.NumberRat(minV.(json.Number))) < 0 {
			return nodeErr("value_smaller_than_min",
				fmt.Sprintf("Value %s smaller than min of %s", pyjson.Str(val), pyjson.Str(minV)), x,
				pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_value", val}})
		}
	}
	if maxV, ok := extra.Get("max"); ok {
		if pyjson.NumberRat(n).Cmp(pyjson.NumberRat(maxV.(json.Number))) > 0 {
			return nodeErr("value_bigger_than_max",
				fmt.Sprintf("Value %s bigger than max of %s", pyjson.Str(val), pyjson.Str(maxV)), x,
				pyjson.Object{{"input_name", x}, {"input_config", info}, {"received_value", val}})
		}
	}
	return nil
}

// customValidation runs the node's VALIDATE_INPUTS, which receives only
// the constant inputs it names, and only when all of them are constant.
func customValidation(def *NodeDef, inputs pyjson.Object) []pyjson.Object {
	if def.Validate == nil {
		return nil
	}
	args := pyjson.Object{}
	for _, name := range def.ValidateInputs {
		if i := inputIndex(inputs, name); i >= 0 {
			if _, isList := IsLink(inputs[i].Value); !isList {
				args = append(args, inputs[i])
			}
		}
	}
	if len(args) != len(def.ValidateInputs) {
		return nil
	}
	ok, msg := def.Validate(args)
	if ok {
		return nil
	}
	var errs []pyjson.Object
	for _, a := range args {
		details := a.Key
		if msg != "" {
			details += " - " + msg
		}
		errs = append(errs, nodeErr("custom_validation_failed", "Custom validation failed for node", details,
			pyjson.Object{{"input_name", a.Key}}))
	}
	return errs
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
