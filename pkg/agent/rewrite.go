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

// rewritePrompt moves a participant's prompt into their own folders on the
// GPU box: every filename_prefix and every input file name gets the
// "<user>/" prefix, so ComfyUI writes to outputs/<user>/ and reads from
// inputs/<user>/. Names that would escape that folder are refused.
func rewritePrompt(prompt json.RawMessage, user string, files uploadInputs) (json.RawMessage, error) {
	var graph map[string]map[string]json.RawMessage
	if err := json.Unmarshal(prompt, &graph); err != nil {
		return nil, fmt.Errorf("decode prompt: %w", err)
	}
	for id, node := range graph {
		var class string
		_ = json.Unmarshal(node["class_type"], &class)
		var inputs map[string]json.RawMessage
		if err := json.Unmarshal(node["inputs"], &inputs); err != nil || inputs == nil {
			continue
		}
		changed := false
		targets := append([]string{"filename_prefix"}, files[class]...)
		for _, name := range targets {
			raw, ok := inputs[name]
			if !ok {
				continue
			}
			var v string
			if json.Unmarshal(raw, &v) != nil {
				continue // a link or a non-string: nothing to rewrite
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
	return json.Marshal(graph)
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

// stripUser turns a subfolder on the GPU box back into the participant's
// own view: "user001/sim" → "sim", "user001" → "".
func stripUser(user, subfolder string) string {
	if subfolder == user {
		return ""
	}
	return strings.TrimPrefix(subfolder, user+"/")
}
