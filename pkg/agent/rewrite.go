package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
)

// ErrPathEscapes is returned when a participant's file name or output prefix
// would leave their own folder on the GPU box.
var ErrPathEscapes = errors.New("path leaves the participant's folder")

// uploadInputs names, per node class, the inputs that refer to files in
// ComfyUI's input folder. Learnt from object_info (inputs flagged
// image_upload, video_upload, audio_upload …), with the core loaders as a
// floor for a ComfyUI whose object_info is not known yet.
type uploadInputs map[string][]string

func defaultUploadInputs() uploadInputs {
	return uploadInputs{
		"LoadImage":     {"image"},
		"LoadImageMask": {"image"},
		"LoadAudio":     {"audio"},
		"LoadVideo":     {"file"},
	}
}

// uploadInputsFrom extracts the file inputs of every node from object_info.
func uploadInputsFrom(objectInfo json.RawMessage) uploadInputs {
	out := defaultUploadInputs()
	var nodes map[string]struct {
		Input map[string]map[string]json.RawMessage `json:"input"`
	}
	if json.Unmarshal(objectInfo, &nodes) != nil {
		return out
	}
	for class, n := range nodes {
		for _, group := range n.Input {
			for name, spec := range group {
				var pair []json.RawMessage
				if json.Unmarshal(spec, &pair) != nil || len(pair) < 2 {
					continue
				}
				var opts map[string]any
				if json.Unmarshal(pair[1], &opts) != nil {
					continue
				}
				for _, flag := range []string{"image_upload", "video_upload", "audio_upload", "upload"} {
					if v, ok := opts[flag]; ok && v != false && v != nil {
						out[class] = appendUnique(out[class], name)
					}
				}
			}
		}
	}
	return out
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// promptRules is what rewritePrompt knows of this box's ComfyUI: which
// inputs name files, and whether it has the core StringConcatenate node
// (which puts "<user>/" in front of a file name another node computes).
type promptRules struct {
	files  uploadInputs
	concat bool
}

func defaultPromptRules() promptRules { return promptRules{files: defaultUploadInputs()} }

// promptRulesFrom reads the rules from object_info.
func promptRulesFrom(objectInfo json.RawMessage) promptRules {
	rules := promptRules{files: uploadInputsFrom(objectInfo)}
	var nodes map[string]json.RawMessage
	if json.Unmarshal(objectInfo, &nodes) == nil {
		_, rules.concat = nodes[concatNode]
	}
	return rules
}

// concatNode is ComfyUI's core string node (comfy_extras/nodes_string.py):
// string_a + delimiter + string_b.
const concatNode = "StringConcatenate"

// ErrLinkedFileName is returned for an input file name another node
// computes: what it reads cannot be checked before it runs.
var ErrLinkedFileName = errors.New("a file name fed by a link cannot be checked")

// rewritePrompt moves a participant's prompt into their own folders on the
// GPU box: every filename_prefix and every input file name gets the
// "<user>/" prefix, so ComfyUI writes to outputs/<user>/ and reads from
// inputs/<user>/. Names that would escape that folder are refused.
//
// A filename_prefix another node computes (a link) gets the prefix at run
// time, through a StringConcatenate node inserted in front of it; the
// agent refuses any output that lands outside outputs/<user>/ anyway
// (shipFile), so a computed "../" cannot leak into another participant's
// files. An input file name fed by a link is refused: the node would read
// before anyone could check the name.
func rewritePrompt(prompt json.RawMessage, user string, rules promptRules) (json.RawMessage, error) {
	var graph map[string]map[string]json.RawMessage
	if err := json.Unmarshal(prompt, &graph); err != nil {
		return nil, fmt.Errorf("decode prompt: %w", err)
	}
	added := map[string]map[string]json.RawMessage{}
	for id, node := range graph {
		var class string
		_ = json.Unmarshal(node["class_type"], &class)
		var inputs map[string]json.RawMessage
		if err := json.Unmarshal(node["inputs"], &inputs); err != nil || inputs == nil {
			continue
		}
		changed := false
		targets := append([]string{"filename_prefix"}, rules.files[class]...)
		for _, name := range targets {
			raw, ok := inputs[name]
			if !ok {
				continue
			}
			var v string
			if json.Unmarshal(raw, &v) != nil {
				if !isLink(raw) {
					continue // a number, a list …: not a file name
				}
				if name != "filename_prefix" {
					return nil, fmt.Errorf("node %s input %s: %w; type the file name in", id, name, ErrLinkedFileName)
				}
				if !rules.concat {
					return nil, fmt.Errorf("node %s input %s: %w without ComfyUI's %s node; type the prefix in", id, name, ErrLinkedFileName, concatNode)
				}
				nid := "atelier_user_" + id + "_" + name
				if _, taken := graph[nid]; taken {
					return nil, fmt.Errorf("node %s input %s: node id %s is taken", id, name, nid)
				}
				prefix, _ := json.Marshal(user + "/")
				added[nid] = map[string]json.RawMessage{
					"class_type": json.RawMessage(`"` + concatNode + `"`),
					"inputs":     json.RawMessage(fmt.Sprintf(`{"string_a":%s,"string_b":%s,"delimiter":""}`, prefix, raw)),
				}
				inputs[name] = json.RawMessage(fmt.Sprintf(`[%q,0]`, nid))
				changed = true
				continue
			}
			nv, err := underUser(user, v)
			if err != nil {
				return nil, fmt.Errorf("node %s input %s: %w", id, name, err)
			}
			inputs[name], _ = json.Marshal(nv)
			changed = true
		}
		if changed {
			node["inputs"], _ = json.Marshal(inputs)
		}
	}
	for id, n := range added {
		graph[id] = n
	}
	return json.Marshal(graph)
}

// isLink reports whether an input is a link: ["node id", output index].
func isLink(raw json.RawMessage) bool {
	var pair []json.RawMessage
	if json.Unmarshal(raw, &pair) != nil || len(pair) != 2 {
		return false
	}
	var id string
	var idx int
	return json.Unmarshal(pair[0], &id) == nil && json.Unmarshal(pair[1], &idx) == nil
}

// underUser prefixes a relative name with "<user>/", keeping ComfyUI's
// " [input]"-style annotation at the end.
func underUser(user, name string) (string, error) {
	annotation := ""
	for _, a := range []string{" [input]", " [output]", " [temp]"} {
		if strings.HasSuffix(name, a) {
			name, annotation = strings.TrimSuffix(name, a), a
		}
	}
	if strings.Contains(name, "\\") || strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: %q", ErrPathEscapes, name)
	}
	var parts []string
	for _, seg := range strings.Split(name, "/") {
		switch seg {
		case "..":
			return "", fmt.Errorf("%w: %q", ErrPathEscapes, name)
		case "", ".":
			continue
		}
		parts = append(parts, seg)
	}
	return path.Join(append([]string{user}, parts...)...) + annotation, nil
}

// ErrForeignOutput is returned for an output ComfyUI reports outside the
// job's own folder: it is refused, never shipped into the participant's
// store (it may be another participant's file).
var ErrForeignOutput = errors.New("output outside the participant's folder")

// ownOutput checks that an output ComfyUI reports is the participant's:
// in <user>/ or below (outputs, and inputs shown back), or, for temp
// files, also at the top of the slot's own temp folder, where ComfyUI's
// previews go whatever the prompt says.
func ownOutput(user string, k fileKey) error {
	bad := func() error {
		return fmt.Errorf("%w: %s %q in %q (the job of %s)", ErrForeignOutput, k.kind, k.name, k.subfolder, user)
	}
	if k.name == "" || strings.ContainsAny(k.name, "/\\\x00") || k.name == "." || k.name == ".." {
		return bad()
	}
	sub := k.subfolder
	if strings.ContainsAny(sub, "\\\x00") || strings.HasPrefix(sub, "/") {
		return bad()
	}
	for _, seg := range strings.Split(sub, "/") {
		if seg == ".." || seg == "." {
			return bad()
		}
	}
	switch {
	case sub == user || strings.HasPrefix(sub, user+"/"):
		return nil
	case sub == "" && k.kind == "temp":
		return nil
	}
	return bad()
}

// stripUser turns a subfolder on the GPU box back into the participant's
// own view: "user001/sim" → "sim", "user001" → "" (ownOutput has checked
// it is under the user's folder).
func stripUser(user, subfolder string) string {
	if subfolder == user {
		return ""
	}
	return strings.TrimPrefix(subfolder, user+"/")
}
