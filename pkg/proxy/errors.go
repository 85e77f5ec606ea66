package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
)

// Sentinel errors of Config validation and of the proxy's life cycle.
var (
	// ErrInvalidConfig wraps every Config validation failure.
	ErrInvalidConfig = errors.New("proxy: invalid config")
	// ErrAlreadyStarted is returned by a second Start.
	ErrAlreadyStarted = errors.New("proxy: already started")
)

// comfyError is ComfyUI's error object (comfyui-api.md §2.1): the frontend
// shows message and details, so they must say what went wrong in words.
type comfyError struct {
	Type      string         `json:"type"`
	Message   string         `json:"message"`
	Details   string         `json:"details"`
	ExtraInfo map[string]any `json:"extra_info"`
}

// promptErrorBody is the 400 body of POST /prompt: always both keys, like
// ComfyUI, because the frontend reads node_errors unconditionally.
type promptErrorBody struct {
	Error      comfyError     `json:"error"`
	NodeErrors map[string]any `json:"node_errors"`
}

// writePromptError answers with ComfyUI's {"error": …, "node_errors": {}}.
func writePromptError(w http.ResponseWriter, status int, typ, message, details string) {
	writeJSON(w, status, promptErrorBody{
		Error: comfyError{Type: typ, Message: message, Details: details, ExtraInfo: map[string]any{}},
		// Never nil: the frontend iterates over it.
		NodeErrors: map[string]any{},
	})
}

// writePlain answers with a plain-text body. ComfyUI answers malformed
// requests with aiohttp's plain-text 500; we keep the status but make the text
// say what is wrong.
func writePlain(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(msg + "\n"))
}

// writeJSON answers with v as compact JSON. ComfyUI uses Python's ", "
// separators; no client depends on them.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := marshalJSON(v)
	if err != nil {
		writePlain(w, http.StatusInternalServerError, "encode response: "+err.Error())
		return
	}
	writeJSONBytes(w, status, b)
}

func writeJSONBytes(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// marshalJSON encodes v without HTML escaping (ComfyUI does not escape <, >
// and & either; prompts contain them in text widgets).
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}
