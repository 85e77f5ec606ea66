package comfysim

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// This file reproduces execution.py's validate_prompt / validate_inputs:
// the same error types, messages, details strings and extra_info keys, and
// the same in-place coercion of widget values ("20" -> 20) that later shows
// up in /queue and /history.

// pyException stands for a Python exception raised during validation, which
// ComfyUI turns into exception_during_(inner_)validation errors.
type pyException struct {
	typ string // full_type_name, e.g. "KeyError"
	msg string // str(ex)
}

func (e *pyException) Error() string { return e.typ + ": " + e.msg }

func keyError(key any) *pyException { return &pyException{"KeyError", pyRepr(key)} }

// fakeTraceback is a plausible traceback.format_tb() list; clients only
// display it.
func fakeTraceback(fn, line string) []any {
	return []any{fmt.Sprintf("  File \"/ComfyUI/execution.py\", line 1, in %s\n    %s\n", fn, line)}
}

// nodeErr builds one entry of node_errors[*].errors.
func nodeErr(typ, message, details string, extra object) object {
	if extra == nil {
		extra = object{}
	}
	return object{{"type", typ}, {"message", message}, {"details", details}, {"extra_info", extra}}
}

// topErr builds the top-level "error" object of a 400 answer.
func topErr(typ, message, details string) object {
	return nodeErr(typ, message, details, nil)
}

type validated struct {
	ok      bool
	reasons []object
}

type validator struct {
	s        *Server
	prompt   object
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

// validationResult is validate_prompt's return value.
type validationResult struct {
	ok         bool
	err        object   // the top-level error when !ok
	outputs    []string // outputs_to_execute
	nodeErrors object
}

// nodeObject returns prompt[id] as an object.
func nodeObject(prompt object, id string) (object, bool) {
	v, ok := prompt.get(id)
	if !ok {
		return nil, false
	}
	o, ok := v.(object)
	return o, ok
}

// validatePrompt validates (and coerces in place) an API-format prompt.
// partial is nil when partial_execution_targets was absent or null.
func (s *Server) validatePrompt(prompt object, partial []string) validationResult {
	var outputs []string
	for _, m := range prompt {
		node, isObj := m.Value.(object)
		classV, hasClass := node.get("class_type")
		if !isObj || !hasClass {
			return validationResult{err: topErr("invalid_prompt",
				"Cannot execute because a node is missing the class_type property.",
				fmt.Sprintf("Node ID '#%s'", m.Key))}
		}
		def, ok := s.lookupClass(classV)
		if !ok {
			return validationResult{err: topErr("invalid_prompt",
				fmt.Sprintf("Cannot execute because node %s does not exist.", pyStr(classV)),
				fmt.Sprintf("Node ID '#%s'", m.Key))}
		}
		if def.outputNode && (partial == nil || contains(partial, m.Key)) {
			outputs = append(outputs, m.Key)
		}
	}
	if len(outputs) == 0 {
		return validationResult{err: topErr("prompt_no_outputs", "Prompt has no outputs", "")}
	}

	v := &validator{s: s, prompt: prompt, done: map[string]validated{}}
	var good []string
	type failed struct {
		output  string
		reasons []object
	}
	var failures []failed
	nodeErrors := object{}
	for _, o := range outputs {
		r, exc := v.validateInputs(o)
		if exc != nil {
			r = v.record(o, validated{false, []object{nodeErr("exception_during_validation",
				"Exception when validating node", exc.msg, object{
					{"exception_type", exc.typ},
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
			ne, exists := nodeErrors.get(id)
			if !exists {
				node, _ := nodeObject(prompt, id)
				class, _ := node.get("class_type")
				reasons := make([]any, len(res.reasons))
				for i, rr := range res.reasons {
					reasons[i] = rr
				}
				ne = object{{"errors", reasons}, {"dependent_outputs", []any{}}, {"class_type", class}}
				nodeErrors = append(nodeErrors, member{id, ne})
			}
			neo := ne.(object)
			deps, _ := neo.get("dependent_outputs")
			neo.set("dependent_outputs", append(deps.([]any), o))
			nodeErrors.set(id, neo)
		}
		s.log.Debug().Str("output", o).Msg("failed to validate prompt output; output will be ignored")
	}
	if len(good) == 0 {
		// As in ComfyUI, details lists only the reasons attached to the
		// output nodes themselves; upstream failures are in node_errors.
		var lines []string
		for _, f := range failures {
			for _, r := range f.reasons {
				msg, _ := r.str("message")
				det, _ := r.str("details")
				lines = append(lines, msg+": "+det)
			}
		}
		return validationResult{
			err:        topErr("prompt_outputs_failed_validation", "Prompt outputs failed validation", strings.Join(lines, "\n")),
			nodeErrors: nodeErrors,
		}
	}
	return validationResult{ok: true, outputs: good, nodeErrors: nodeErrors}
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
func (s *Server) lookupClass(v any) (*nodeDef, bool) {
	name, ok := v.(string)
	if !ok {
		return nil, false
	}
	d, ok := s.nodes[name]
	return d, ok
}

// isLink reports whether v is a link-shaped value (any JSON list counts, as
// isinstance(val, list) in ComfyUI).
func isLink(v any) ([]any, bool) {
	l, ok := v.([]any)
	return l, ok
}

// validateInputs is validate_inputs(): it returns the node's verdict, or a
// Python-style exception that the caller reports.
func (v *validator) validateInputs(id string) (validated, *pyException) {
	if r, ok := v.done[id]; ok {
		return r, nil
	}
	if i := indexOf(v.visiting, id); i >= 0 {
		path := append(append([]string(nil), v.visiting[i:]...), id)
		parts := make([]string, len(path))
		for j, n := range path {
			node, _ := nodeObject(v.prompt, n)
			class, _ := node.get("class_type")
			parts[j] = fmt.Sprintf("%s (%s)", n, pyStr(class))
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
			v.record(n.(string), validated{false, []object{nodeErr("dependency_cycle", "Dependency cycle detected",
				strings.Join(parts, " -> "), object{{"node_id", n}, {"cycle_nodes", cycle}})}})
		}
		return v.done[id], nil
	}

	node, ok := nodeObject(v.prompt, id)
	if !ok {
		return validated{}, keyError(id)
	}
	inputsV, ok := node.get("inputs")
	if !ok {
		return validated{}, keyError("inputs")
	}
	inputs, ok := inputsV.(object)
	if !ok {
		return validated{}, &pyException{"AttributeError", fmt.Sprintf("'%s' object has no attribute 'get'", pyTypeName(inputsV))}
	}
	classV, _ := node.get("class_type")
	def, _ := v.s.lookupClass(classV)

	var errs []object
	valid := true
	specs := append(append([]inputSpec(nil), def.required...), def.optional...)
	for _, spec := range specs {
		x := spec.name
		_, category, _ := def.input(x)
		idx := inputIndex(inputs, x)
		if idx < 0 {
			if category == "required" {
				errs = append(errs, nodeErr("required_input_missing", "Required input is missing", x, object{{"input_name", x}}))
			}
			continue
		}
		val := inputs[idx].Value
		info := spec.config(v.s)
		extra := spec.extra()

		if link, isList := isLink(val); isList {
			if len(link) != 2 {
				errs = append(errs, nodeErr("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", x,
					object{{"input_name", x}, {"input_config", info}, {"received_value", val}}))
				continue
			}
			oID, isStr := link[0].(string)
			fromNode, exists := nodeObject(v.prompt, oID)
			if !isStr || !exists {
				return validated{}, keyError(link[0])
			}
			fromClassV, _ := fromNode.get("class_type")
			fromDef, _ := v.s.lookupClass(fromClassV)
			slot, exc := tupleIndex(link[1], len(fromDef.outputs))
			if exc != nil {
				return validated{}, exc
			}
			received := fromDef.outputs[slot]
			if !contains(def.validateInputs, "input_types") && !typesCompatible(received, spec) {
				var inputType any = spec.typ
				if spec.isCombo() {
					inputType = info[0]
				}
				errs = append(errs, nodeErr("return_type_mismatch", "Return type mismatch between linked nodes",
					fmt.Sprintf("%s, received_type(%s) mismatch input_type(%s)", x, received, pyStr(inputType)),
					object{{"input_name", x}, {"input_config", info}, {"received_type", received}, {"linked_node", val}}))
				continue
			}
			v.visiting = append(v.visiting, id)
			r, exc := v.validateInputs(oID)
			v.visiting = v.visiting[:len(v.visiting)-1]
			if exc != nil {
				valid = false
				v.record(oID, validated{false, []object{nodeErr("exception_during_inner_validation",
					"Exception when validating inner node", exc.msg, object{
						{"input_name", x}, {"input_config", info}, {"exception_message", exc.msg},
						{"exception_type", exc.typ},
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

		if o, isObj := val.(object); isObj {
			if inner, ok := o.get("__value__"); ok {
				val = inner
				inputs[idx].Value = val
			}
		}
		coerced, cerr := coerce(spec.typ, val)
		if cerr != "" {
			errs = append(errs, nodeErr("invalid_input_type",
				fmt.Sprintf("Failed to convert an input value to a %s value", spec.typ),
				fmt.Sprintf("%s, %s, %s", x, pyStr(val), cerr),
				object{{"input_name", x}, {"input_config", info}, {"received_value", val}, {"exception_message", cerr}}))
			continue
		}
		if coerced != nil {
			val = coerced
			inputs[idx].Value = val
		}

		if contains(def.validateInputs, x) {
			continue
		}
		if n, isNum := val.(json.Number); isNum {
			if minV, ok := extra.get("min"); ok {
				if numberRat(n).Cmp(numberRat(minV.(json.Number))) < 0 {
					errs = append(errs, nodeErr("value_smaller_than_min",
						fmt.Sprintf("Value %s smaller than min of %s", pyStr(val), pyStr(minV)), x,
						object{{"input_name", x}, {"input_config", info}, {"received_value", val}}))
					continue
				}
			}
			if maxV, ok := extra.get("max"); ok {
				if numberRat(n).Cmp(numberRat(maxV.(json.Number))) > 0 {
					errs = append(errs, nodeErr("value_bigger_than_max",
						fmt.Sprintf("Value %s bigger than max of %s", pyStr(val), pyStr(maxV)), x,
						object{{"input_name", x}, {"input_config", info}, {"received_value", val}}))
					continue
				}
			}
		}
		if spec.isCombo() {
			options := spec.combo(v.s)
			if sv, isStr := val.(string); !isStr || !contains(options, sv) {
				var inputConfig any = info
				listInfo := pyRepr(options)
				// Gigantic lists (scanned model files) are not sent back.
				if len(options) > 20 {
					listInfo = fmt.Sprintf("(list of length %d)", len(options))
					inputConfig = nil
				}
				errs = append(errs, nodeErr("value_not_in_list", "Value not in list",
					fmt.Sprintf("%s: %s not in %s", x, pyRepr(val), listInfo),
					object{{"input_name", x}, {"input_config", inputConfig}, {"received_value", val}}))
				continue
			}
		}
	}

	if def.validate != nil {
		// VALIDATE_INPUTS receives only constant inputs it names.
		args := object{}
		for _, name := range def.validateInputs {
			if i := inputIndex(inputs, name); i >= 0 {
				if _, isList := isLink(inputs[i].Value); !isList {
					args = append(args, inputs[i])
				}
			}
		}
		if len(args) == len(def.validateInputs) {
			if ok, msg := def.validate(v.s, args); !ok {
				for _, a := range args {
					details := a.Key
					if msg != "" {
						details += " - " + msg
					}
					errs = append(errs, nodeErr("custom_validation_failed", "Custom validation failed for node", details,
						object{{"input_name", a.Key}}))
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
func inputIndex(inputs object, name string) int {
	for i, m := range inputs {
		if m.Key == name {
			return i
		}
	}
	return -1
}

// tupleIndex is Python's RETURN_TYPES[idx] for a JSON value.
func tupleIndex(v any, n int) (int, *pyException) {
	num, ok := v.(json.Number)
	if !ok || !numberIsInt(num) {
		if b, isBool := v.(bool); isBool { // bool is an int in Python
			if b {
				num = "1"
			} else {
				num = "0"
			}
		} else {
			return 0, &pyException{"TypeError", fmt.Sprintf("tuple indices must be integers or slices, not %s", pyTypeName(v))}
		}
	}
	i, err := strconv.Atoi(string(num))
	if err == nil && i < 0 {
		i += n
	}
	if err != nil || i < 0 || i >= n {
		return 0, &pyException{"IndexError", "tuple index out of range"}
	}
	return i, nil
}

// typesCompatible is validate_node_input(received_type, input_type).
func typesCompatible(received string, spec inputSpec) bool {
	if spec.isCombo() {
		// A list input type never equals a string type.
		return false
	}
	if received == spec.typ {
		return true
	}
	split := func(t string) map[string]bool {
		m := map[string]bool{}
		for _, p := range strings.Split(t, ",") {
			m[strings.TrimSpace(p)] = true
		}
		return m
	}
	a, b := split(received), split(spec.typ)
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
		f, msg := pyFloatOf(val)
		if msg != "" {
			return nil, msg
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			// Keep the original spelling; JSON cannot carry nan/inf.
			return nil, ""
		}
		return json.Number(pyFloatRepr(f)), ""
	case "STRING":
		return pyStr(val), ""
	case "BOOLEAN":
		return pyTruthy(val), ""
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
		if numberIsInt(t) {
			i, _ := new(big.Int).SetString(string(t), 10)
			return i, ""
		}
		f := numberFloat(t)
		if math.IsInf(f, 0) {
			return nil, "cannot convert float infinity to integer"
		}
		i, _ := new(big.Float).SetFloat64(math.Trunc(f)).Int(nil)
		return i, ""
	case string:
		s := strings.ReplaceAll(strings.TrimSpace(t), "_", "")
		i, ok := new(big.Int).SetString(s, 10)
		if !ok || strings.Contains(t, "__") || strings.HasPrefix(strings.TrimSpace(t), "_") {
			return nil, fmt.Sprintf("invalid literal for int() with base 10: %s", pyStrRepr(t))
		}
		return i, ""
	default:
		return nil, fmt.Sprintf("int() argument must be a string, a bytes-like object or a real number, not '%s'", pyTypeName(val))
	}
}

// pyFloatOf is Python's float(val).
func pyFloatOf(val any) (float64, string) {
	switch t := val.(type) {
	case bool:
		if t {
			return 1, ""
		}
		return 0, ""
	case json.Number:
		return numberFloat(t), ""
	case string:
		s := strings.ToLower(strings.TrimSpace(t))
		switch strings.TrimLeft(s, "+-") {
		case "inf", "infinity", "nan":
			f, _ := strconv.ParseFloat(s, 64)
			return f, ""
		}
		f, err := strconv.ParseFloat(strings.ReplaceAll(s, "_", ""), 64)
		if err != nil || s == "" || strings.HasPrefix(s, "0x") {
			return 0, fmt.Sprintf("could not convert string to float: %s", pyStrRepr(t))
		}
		return f, ""
	default:
		return 0, fmt.Sprintf("float() argument must be a string or a real number, not '%s'", pyTypeName(val))
	}
}
