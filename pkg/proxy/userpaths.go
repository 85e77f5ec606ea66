package proxy

import (
	"encoding/json"
	"strings"

	"github.com/atelier-run/atelier/pkg/comfyapi"
	"github.com/atelier-run/atelier/pkg/wire"
)

// withoutUserPaths takes the agent's per-user folder ("<user>/", which it
// puts in front of every file name and filename_prefix on the GPU box) out
// of what ComfyUI reported about a failed run, so that the participant sees
// their own names, as in the prompt they sent: the inputs of the failing
// node (current_inputs) and the exception text, in the execution_error
// payload and in the history's status messages.
func withoutUserPaths(rec *wire.JobRecord) {
	prefix := rec.User + "/"
	clean := func(raw json.RawMessage) json.RawMessage {
		if len(raw) == 0 || !strings.Contains(string(raw), prefix) {
			return raw
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			return raw
		}
		for _, k := range []string{"current_inputs", "exception_message"} {
			if v, ok := m[k]; ok {
				m[k] = stripPrefix(v, prefix)
			}
		}
		b, err := marshalJSON(m)
		if err != nil {
			return raw
		}
		return b
	}
	rec.Error = clean(rec.Error)
	for i, msg := range rec.Messages {
		var pair []json.RawMessage
		if !strings.Contains(string(msg), prefix) || json.Unmarshal(msg, &pair) != nil || len(pair) != 2 {
			continue
		}
		var typ string
		if json.Unmarshal(pair[0], &typ) != nil || typ != comfyapi.MsgExecutionError {
			continue
		}
		if b, err := marshalJSON([]json.RawMessage{pair[0], clean(pair[1])}); err == nil {
			rec.Messages[i] = b
		}
	}
}

// stripPrefix removes prefix where a path starts in the strings of v (a
// whole string, or a path after a space, quote or colon in a message).
func stripPrefix(v json.RawMessage, prefix string) json.RawMessage {
	var x any
	if json.Unmarshal(v, &x) != nil {
		return v
	}
	var walk func(any) any
	walk = func(x any) any {
		switch t := x.(type) {
		case string:
			t = strings.TrimPrefix(t, prefix)
			for _, sep := range []string{" ", "'", "\"", ":", "("} {
				t = strings.ReplaceAll(t, sep+prefix, sep)
			}
			return t
		case []any:
			for i := range t {
				t[i] = walk(t[i])
			}
		case map[string]any:
			for k := range t {
				t[k] = walk(t[k])
			}
		}
		return x
	}
	b, err := marshalJSON(walk(x))
	if err != nil {
		return v
	}
	return b
}
