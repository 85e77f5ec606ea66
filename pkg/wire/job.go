package wire

import (
	"encoding/json"
	"strconv"
	"time"
)

// Job is a participant's accepted prompt as the proxy publishes it on
// SUBMIT. Prompt and ExtraData are kept exactly as the participant sent them
// (with the participant's own file names); agents rewrite paths per user.
type Job struct {
	ID   string `json:"id"`
	User string `json:"user"`
	Pool string `json:"pool"`
	// Prompt is the API-format graph (node id → {class_type, inputs}).
	Prompt json.RawMessage `json:"prompt"`
	// ExtraData is ComfyUI's extra_data (client_id, extra_pnginfo …).
	ExtraData json.RawMessage `json:"extra_data,omitempty"`
	// ClientID selects the participant's WebSocket that receives events.
	ClientID string `json:"client_id,omitempty"`
	// OutputsToExecute are the output node ids, as ComfyUI's queue tuple.
	OutputsToExecute []string `json:"outputs_to_execute"`
	// Number and Front are ComfyUI's optional priority fields of POST
	// /prompt: Number orders the user's own queue (lower first), Front
	// puts the job ahead of the user's other queued jobs.
	Number *float64 `json:"number,omitempty"`
	Front  bool     `json:"front,omitempty"`
	// Inputs is the manifest of uploaded files the prompt references.
	Inputs      []InputFile `json:"inputs,omitempty"`
	SubmittedAt time.Time   `json:"submitted_at"`
}

// InputFile is one entry of a job's input manifest.
type InputFile struct {
	Subfolder string `json:"subfolder,omitempty"`
	Name      string `json:"name"`
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
}

// Ticket is what the dispatcher releases into DISPATCH: small, it names the
// job; the agent claims the job itself from the broker.
type Ticket struct {
	JobID string `json:"job_id"`
	User  string `json:"user"`
	Pool  string `json:"pool"`
	// Release counts how often the dispatcher released this job, so a
	// re-release after a restart gets a fresh Nats-Msg-Id.
	Release int `json:"release"`
}

// MsgID is the Nats-Msg-Id of the ticket, for publish de-duplication.
// Prompt ids are the participants' own (a client may choose one), so two
// participants' jobs may share an id: the user keeps their tickets apart.
func (t Ticket) MsgID() string { return t.User + "/" + t.JobID + "/" + itoa(t.Release) }

// SubmitMsgID is the Nats-Msg-Id of a job's SUBMIT message. It names the
// user (participants choose prompt ids, so two may pick the same) and the
// run: generation is the SUBMIT sequence of the job's last finished run (0
// for its first), so a second submission racing the first within the
// duplicate window is recognised as a duplicate, while queueing a finished
// prompt id again is a new run.
func SubmitMsgID(user, jobID string, generation uint64) string {
	return user + "/" + jobID + "/" + strconv.FormatUint(generation, 10)
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
