package proxy

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"github.com/atelier-run/atelier/pkg/comfyvalidate"
	"github.com/atelier-run/atelier/pkg/pyjson"
	"github.com/atelier-run/atelier/pkg/wire"
)

// Bounds on what a participant may send. ComfyUI has none beyond the upload
// size; a shared queue needs them so one request cannot hurt the others.
const (
	// maxJSONDepth bounds nesting in request bodies. Real workflows (with the
	// UI graph and subgraph definitions in extra_pnginfo) stay below ~30.
	maxJSONDepth = 128
	// maxClientIDLen bounds client_id (a socket id: 32 hex in practice).
	maxClientIDLen = 256
	// maxPromptNodes bounds the number of nodes in one prompt.
	maxPromptNodes = 10_000
)

// requestError is a refusal of a request, in one of ComfyUI's two shapes:
// plain text (aiohttp's generic errors) or the {"error", "node_errors"} JSON
// of POST /prompt (when Type is set).
type requestError struct {
	Status  int
	Type    string // "" → plain text Message
	Message string
	Details string
	// Body, when set, is the whole JSON answer (validation failures with
	// their node_errors).
	Body []byte
}

func (e *requestError) Error() string {
	if e.Details != "" {
		return e.Message + ": " + e.Details
	}
	return e.Message
}

func (e *requestError) write(w http.ResponseWriter) {
	if e.Body != nil {
		writeJSONBytes(w, e.Status, e.Body)
		return
	}
	if e.Type == "" {
		writePlain(w, e.Status, e.Message)
		return
	}
	writePromptError(w, e.Status, e.Type, e.Message, e.Details)
}

func plainError(status int, format string, args ...any) *requestError {
	return &requestError{Status: status, Message: fmt.Sprintf(format, args...)}
}

// promptRequest is a parsed and validated POST /prompt body.
type promptRequest struct {
	// Prompt is the graph exactly as sent.
	Prompt json.RawMessage
	// ExtraData is extra_data with client_id copied in, like ComfyUI.
	ExtraData json.RawMessage
	ClientID  string
	// PromptID is the client's prompt_id, "" when it sent none.
	PromptID string
	// Outputs are the output node ids, ComfyUI's outputs_to_execute.
	Outputs []string
	// Validated is false when the pool had no catalog to check against.
	Validated bool
	// NodeErrors are the failures of outputs that were dropped (the
	// prompt runs the others), as ComfyUI answers them on success.
	NodeErrors json.RawMessage
	// Number and Front are ComfyUI's priority fields.
	Number *float64
	Front  bool
	// Inputs is the manifest of the participant's uploaded files the
	// prompt references.
	Inputs []wire.InputFile
}

// parseOptions are what parsePromptRequest needs beyond the body.
type parseOptions struct {
	// stat finds the participant's files (upload widgets); nil: none exist.
	stat inputStat
	// newerErrors selects missing_node_type for unknown classes.
	newerErrors bool
}

// parsePromptRequest parses body like ComfyUI's POST /prompt handler and
// validate_prompt (comfyui-api.md §2.1): the same statuses and error types,
// so the frontend shows our refusals the way it shows ComfyUI's. cat may be
// nil when the pool has no catalog yet; then node classes cannot be checked
// and the output nodes are guessed as the graph's sinks.
func parsePromptRequest(body []byte, cat *poolCatalog, opts parseOptions) (*promptRequest, *requestError) {
	top, rerr := decodeRequestObject(body)
	if rerr != nil {
		return nil, rerr
	}
	// ComfyUI reads the priority first: a bad number fails (500) even
	// before a missing prompt is noticed.
	req := &promptRequest{}
	if rerr := req.readPriority(top); rerr != nil {
		return nil, rerr
	}
	nodes, rerr := req.readPrompt(top)
	if rerr != nil {
		return nil, rerr
	}
	if rerr := req.readClient(top); rerr != nil {
		return nil, rerr
	}
	partial, rerr := readPartialTargets(top)
	if rerr != nil {
		return nil, rerr
	}
	if cat != nil && cat.validate != nil {
		if rerr := req.validate(cat, partial, opts); rerr != nil {
			return nil, rerr
		}
		return req, nil
	}

	outputs, rerr := findOutputs(nodes, cat)
	if rerr != nil {
		return nil, rerr
	}
	req.Validated = cat != nil
	if partial != nil {
		outputs = slices.DeleteFunc(outputs, func(id string) bool { return !slices.Contains(partial, id) })
	}
	if len(outputs) == 0 {
		return nil, &requestError{Status: http.StatusBadRequest, Type: "prompt_no_outputs",
			Message: "Prompt has no outputs", Details: ""}
	}
	req.Outputs = outputs
	return req, nil
}

// decodeRequestObject decodes a request body that must be a JSON object,
// bounded in depth.
func decodeRequestObject(body []byte) (map[string]json.RawMessage, *requestError) {
	if err := checkJSONDepth(body, maxJSONDepth); err != nil {
		return nil, plainError(http.StatusBadRequest, "invalid JSON body: %v", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, plainError(http.StatusInternalServerError, "invalid JSON body: %v", err)
	}
	if top == nil {
		return nil, plainError(http.StatusInternalServerError, "invalid JSON body: want an object with a \"prompt\" key")
	}
	return top, nil
}

// readPriority reads number, else front, as ComfyUI does.
func (req *promptRequest) readPriority(top map[string]json.RawMessage) *requestError {
	if raw, ok := top["number"]; ok {
		// ComfyUI: float(number); anything else raises (500).
		var n float64
		if err := json.Unmarshal(raw, &n); err != nil {
			var s string
			if json.Unmarshal(raw, &s) != nil {
				return plainError(http.StatusInternalServerError, "invalid number: want a number")
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
				return plainError(http.StatusInternalServerError, "invalid number: want a number")
			}
			n = f
		}
		req.Number = &n
	} else if raw, ok := top["front"]; ok {
		var v any
		_ = json.Unmarshal(raw, &v)
		req.Front = pyjson.Truthy(v)
	}
	return nil
}

// readPrompt reads the graph (kept as sent in req.Prompt) and returns its
// nodes.
func (req *promptRequest) readPrompt(top map[string]json.RawMessage) (map[string]json.RawMessage, *requestError) {
	rawPrompt, ok := top["prompt"]
	if !ok {
		return nil, &requestError{Status: http.StatusBadRequest, Type: "no_prompt",
			Message: "No prompt provided", Details: "No prompt provided"}
	}
	var nodes map[string]json.RawMessage
	if err := json.Unmarshal(rawPrompt, &nodes); err != nil || nodes == nil {
		return nil, plainError(http.StatusInternalServerError, "invalid prompt: want an object mapping node ids to nodes")
	}
	if len(nodes) > maxPromptNodes {
		return nil, plainError(http.StatusBadRequest, "invalid prompt: more than %d nodes", maxPromptNodes)
	}
	req.Prompt = rawPrompt
	return nodes, nil
}

// readClient reads prompt_id, client_id and extra_data (into which
// client_id is copied, like ComfyUI).
func (req *promptRequest) readClient(top map[string]json.RawMessage) *requestError {
	if raw, ok := top["prompt_id"]; ok && !isNull(raw) {
		var id string
		// Newer ComfyUI's check, always: job ids name NATS subjects and
		// keys, so the baseline's "any value" cannot be taken.
		if err := json.Unmarshal(raw, &id); err != nil || !canonicalUUID(id) {
			return &requestError{Status: http.StatusBadRequest, Type: "invalid_prompt_id",
				Message: "prompt_id must be a valid UUID",
				Details: "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one"}
		}
		req.PromptID = id
	}
	if raw, ok := top["client_id"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &req.ClientID); err != nil {
			return plainError(http.StatusInternalServerError, "invalid client_id: want a string")
		}
		if len(req.ClientID) > maxClientIDLen {
			return plainError(http.StatusBadRequest, "invalid client_id: longer than %d bytes", maxClientIDLen)
		}
	}
	extra := map[string]json.RawMessage{}
	if raw, ok := top["extra_data"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &extra); err != nil || extra == nil {
			return plainError(http.StatusInternalServerError, "invalid extra_data: want an object")
		}
	}
	if req.ClientID != "" {
		b, _ := json.Marshal(req.ClientID)
		extra["client_id"] = b
	}
	b, err := json.Marshal(extra)
	if err != nil {
		return plainError(http.StatusInternalServerError, "encode extra_data: %v", err)
	}
	req.ExtraData = b
	return nil
}

// readPartialTargets reads partial_execution_targets: nil when absent, the
// only outputs to run otherwise (empty: none).
func readPartialTargets(top map[string]json.RawMessage) ([]string, *requestError) {
	raw, ok := top["partial_execution_targets"]
	if !ok || isNull(raw) {
		return nil, nil
	}
	var partial []string
	if err := json.Unmarshal(raw, &partial); err != nil {
		return nil, plainError(http.StatusInternalServerError, "invalid partial_execution_targets: want a list of node ids")
	}
	if partial == nil {
		partial = []string{}
	}
	return partial, nil
}

// validate runs ComfyUI's validate_prompt (pkg/comfyvalidate, the same code
// as the simulator's) against the pool's catalog and the participant's
// files, coerces widget values in place like ComfyUI (the coerced prompt is
// what /queue and /history show), and computes the input manifest.
func (req *promptRequest) validate(cat *poolCatalog, partial []string, opts parseOptions) *requestError {
	v, err := pyjson.Decode(req.Prompt)
	if err != nil {
		return plainError(http.StatusInternalServerError, "invalid prompt: %v", err)
	}
	prompt, ok := v.(pyjson.Object)
	if !ok {
		return plainError(http.StatusInternalServerError, "invalid prompt: want an object mapping node ids to nodes")
	}
	for _, m := range prompt {
		// Python's `'class_type' in node` raises for a number or a list:
		// aiohttp's 500, not a validation error.
		if _, ok := m.Value.(pyjson.Object); !ok {
			if _, isStr := m.Value.(string); !isStr {
				return plainError(http.StatusInternalServerError, "invalid prompt: node %q is not an object", m.Key)
			}
		}
	}
	vcat := &uploadCatalog{base: cat.validate, stat: opts.stat}
	res := comfyvalidate.ValidateWith(vcat, prompt, partial,
		comfyvalidate.Options{MissingNodeType: opts.newerErrors || cat.newerErrors})
	if !res.OK {
		ne := res.NodeErrors
		if ne == nil {
			ne = pyjson.Object{}
		}
		body := pyjson.Object{{"error", res.Err}, {"node_errors", ne}}
		return &requestError{Status: http.StatusBadRequest, Body: comfyvalidate.RawOf(body)}
	}
	req.Validated = true
	// ComfyUI's order is a Python set's; ascending ids are as good and stable.
	req.Outputs = slices.SortedFunc(slices.Values(res.Outputs), compareNodeIDs)
	req.Prompt = comfyvalidate.RawOf(prompt)
	if res.NodeErrors == nil {
		res.NodeErrors = pyjson.Object{}
	}
	req.NodeErrors = comfyvalidate.RawOf(res.NodeErrors)
	if opts.stat != nil {
		inputs, err := inputManifest(vcat, prompt, opts.stat)
		if err != nil {
			return plainError(http.StatusServiceUnavailable, "look up input files: %v", err)
		}
		req.Inputs = inputs
	}
	return nil
}

// findOutputs checks every node's class against the catalog and returns the
// output node ids in ascending (numeric where possible) order.
func findOutputs(nodes map[string]json.RawMessage, cat *poolCatalog) ([]string, *requestError) {
	ids := make([]string, 0, len(nodes))
	for id := range nodes {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, compareNodeIDs)

	referenced := map[string]bool{}
	var outputs []string
	for _, id := range ids {
		var node struct {
			ClassType json.RawMessage            `json:"class_type"`
			Inputs    map[string]json.RawMessage `json:"inputs"`
		}
		var probe map[string]json.RawMessage
		if err := json.Unmarshal(nodes[id], &probe); err != nil || probe == nil {
			return nil, plainError(http.StatusInternalServerError, "invalid prompt: node %q is not an object", id)
		}
		if err := json.Unmarshal(nodes[id], &node); err != nil {
			return nil, plainError(http.StatusInternalServerError, "invalid prompt: node %q: %v", id, err)
		}
		if len(node.ClassType) == 0 || isNull(node.ClassType) {
			return nil, &requestError{Status: http.StatusBadRequest, Type: "invalid_prompt",
				Message: "Cannot execute because a node is missing the class_type property.",
				Details: fmt.Sprintf("Node ID '#%s'", id)}
		}
		var class string
		classOK := json.Unmarshal(node.ClassType, &class) == nil
		if cat != nil {
			if !classOK || !cat.hasClass(class) {
				shown := class
				if !classOK {
					shown = string(node.ClassType)
				}
				return nil, &requestError{Status: http.StatusBadRequest, Type: "invalid_prompt",
					Message: fmt.Sprintf("Cannot execute because node %s does not exist.", truncate(shown, 200)),
					Details: fmt.Sprintf("Node ID '#%s'", id)}
			}
			if cat.isOutputNode(class) {
				outputs = append(outputs, id)
			}
			continue
		}
		for _, v := range node.Inputs {
			if src, ok := linkSource(v); ok {
				referenced[src] = true
			}
		}
	}
	if cat == nil {
		// Without a catalog the graph's sinks are the best guess of its
		// output nodes (SaveImage, PreviewImage … feed nothing).
		for _, id := range ids {
			if !referenced[id] {
				outputs = append(outputs, id)
			}
		}
	}
	return outputs, nil
}

// linkSource reports whether v is a link ["<node id>", <output index>].
func linkSource(v json.RawMessage) (string, bool) {
	var link []json.RawMessage
	if json.Unmarshal(v, &link) != nil || len(link) != 2 {
		return "", false
	}
	var src string
	var idx float64
	if json.Unmarshal(link[0], &src) != nil || json.Unmarshal(link[1], &idx) != nil {
		return "", false
	}
	return src, true
}

// compareNodeIDs orders node ids numerically where both are integers (so
// "5" < "10", as ComfyUI's example ["5", "6"]), numbers before other ids, and
// otherwise as strings.
func compareNodeIDs(a, b string) int {
	na, ea := strconv.ParseInt(a, 10, 64)
	nb, eb := strconv.ParseInt(b, 10, 64)
	switch {
	case ea == nil && eb == nil:
		switch {
		case na < nb:
			return -1
		case na > nb:
			return 1
		}
		return strings.Compare(a, b)
	case ea == nil:
		return -1
	case eb == nil:
		return 1
	}
	return strings.Compare(a, b)
}

// canonicalUUID reports whether s is a lowercase hyphenated UUID, the form
// newer ComfyUI requires of a client prompt_id (and a valid NATS token).
func canonicalUUID(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && u.String() == s
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// checkJSONDepth refuses JSON nested deeper than max before it is decoded:
// encoding/json allows 10,000 levels, and a deeply nested body costs memory
// and stack out of proportion to its size. It only counts brackets outside
// strings; syntax errors are left to the decoder.
func checkJSONDepth(b []byte, max int) error {
	depth := 0
	inString, escaped := false, false
	for _, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > max {
				return fmt.Errorf("nested deeper than %d levels", max)
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}
