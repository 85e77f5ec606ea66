package comfyapi

import "encoding/json"

// History status_str values (comfyui-api.md §4): "success", or "error" for
// failed and interrupted prompts alike.
const (
	HistorySuccess = "success"
	HistoryError   = "error"
)

// HistoryEntry is one value of GET /history (comfyui-api.md §4), with the
// queue tuple left out: readers take outputs, meta and status.
type HistoryEntry struct {
	Outputs map[string]json.RawMessage `json:"outputs"`
	Meta    map[string]json.RawMessage `json:"meta"`
	Status  HistoryStatus              `json:"status"`
}

// HistoryStatus is a history entry's "status" object.
type HistoryStatus struct {
	StatusStr string `json:"status_str"`
	Completed bool   `json:"completed"`
	// Messages are [event, data] pairs in order; see HistoryMessage.
	Messages []json.RawMessage `json:"messages"`
}

// HistoryMessage splits one [event, data] pair of a history entry's
// status messages; ok is false when raw is not such a pair.
func HistoryMessage(raw json.RawMessage) (event string, data json.RawMessage, ok bool) {
	var pair []json.RawMessage
	if json.Unmarshal(raw, &pair) != nil || len(pair) != 2 {
		return "", nil, false
	}
	if json.Unmarshal(pair[0], &event) != nil {
		return "", nil, false
	}
	return event, pair[1], true
}
