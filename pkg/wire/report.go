package wire

import (
	"encoding/json"
	"time"
)

// ReportKind says what happened to a job on an agent.
type ReportKind string

const (
	// ReportStarted: ComfyUI accepted the prompt and started it.
	ReportStarted ReportKind = "started"
	// ReportOutput: an output node finished and its files are stored on
	// mello; Node and Output name them.
	ReportOutput ReportKind = "output"
	// ReportSucceeded: the prompt finished; Outputs, Meta and Messages
	// carry ComfyUI's history entry with the participant's names.
	ReportSucceeded ReportKind = "succeeded"
	// ReportFailed: ComfyUI reported an execution error (Error), or the
	// agent gave up (Reason).
	ReportFailed ReportKind = "failed"
	// ReportInterrupted: the prompt was interrupted on request.
	ReportInterrupted ReportKind = "interrupted"
	// ReportReleased: the agent gives the job back for another attempt
	// (ComfyUI crashed, the agent drains); the ticket is nak'd.
	ReportReleased ReportKind = "released"
)

// Report is what an agent publishes on REPORTS about one attempt of a job.
type Report struct {
	Kind    ReportKind `json:"kind"`
	JobID   string     `json:"job_id"`
	User    string     `json:"user"`
	Agent   string     `json:"agent"`
	Slot    string     `json:"slot"`
	Attempt int        `json:"attempt"`
	At      time.Time  `json:"at"`

	Node   string          `json:"node,omitempty"`
	Output json.RawMessage `json:"output,omitempty"`

	Outputs  map[string]json.RawMessage `json:"outputs,omitempty"`
	Meta     map[string]json.RawMessage `json:"meta,omitempty"`
	Messages []json.RawMessage          `json:"messages,omitempty"`
	Error    json.RawMessage            `json:"error,omitempty"`
	Reason   string                     `json:"reason,omitempty"`
}

// MsgID de-duplicates a report published twice (an agent retrying after a
// lost publish acknowledgement).
func (r Report) MsgID() string {
	// The user: two participants' jobs may share a (client-chosen) id.
	id := r.User + "/" + r.JobID + "/" + itoa(r.Attempt) + "/" + string(r.Kind)
	if r.Node != "" {
		id += "/" + r.Node
	}
	return id
}
