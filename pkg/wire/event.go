package wire

import "encoding/json"

// Event is one live ComfyUI WebSocket message of a running job, relayed by
// the agent on evt.<agent>.<user>.<job> (core NATS: lossy, in order per
// agent). The agent has already translated ComfyUI's prompt id into the job
// id and the participant's file names, so the proxy forwards Data as is.
type Event struct {
	JobID    string `json:"job_id"`
	ClientID string `json:"client_id,omitempty"`
	Attempt  int    `json:"attempt"`
	// Type is the ComfyUI message type (executing, progress, executed …).
	// Empty for a binary frame.
	Type string          `json:"type,omitempty"`
	Data json.RawMessage `json:"data,omitempty"`
	// Binary is a whole ComfyUI binary frame (event type + payload).
	Binary []byte `json:"binary,omitempty"`
}
