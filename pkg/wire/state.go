package wire

import (
	"encoding/json"
	"time"
)

// JobState is the state of a job in JOBS.
type JobState string

// The job states. queued → dispatched → running → one of the final states;
// queued and dispatched jobs may also be cancelled, a running job that an
// agent gives back returns to dispatched for another attempt, and a
// dispatched job whose attempts are used up fails.
const (
	StateQueued      JobState = "queued"
	StateDispatched  JobState = "dispatched"
	StateRunning     JobState = "running"
	StateSucceeded   JobState = "succeeded"
	StateFailed      JobState = "failed"
	StateCancelled   JobState = "cancelled"
	StateInterrupted JobState = "interrupted"
)

// Final reports whether no transition leaves s.
func (s JobState) Final() bool {
	switch s {
	case StateSucceeded, StateFailed, StateCancelled, StateInterrupted:
		return true
	}
	return false
}

// Pending reports whether the job counts toward the participant's queue
// (ComfyUI's queue_remaining: pending plus running).
func (s JobState) Pending() bool {
	switch s {
	case StateQueued, StateDispatched, StateRunning:
		return true
	}
	return false
}

// CanTransition reports whether from → to is a legal transition.
func CanTransition(from, to JobState) bool {
	switch from {
	case StateQueued:
		return to == StateDispatched || to == StateRunning || to == StateCancelled
	case StateDispatched:
		return to == StateRunning || to == StateQueued || to == StateCancelled || to == StateFailed
	case StateRunning:
		switch to {
		case StateSucceeded, StateFailed, StateInterrupted, StateCancelled, StateDispatched:
			return true
		}
	}
	return false
}

// JobRecord is the value of a job's key in JOBS. It carries what the
// participant's history needs beyond the job's state: the prompt (to load
// the workflow again), the outputs and ComfyUI's status messages.
type JobRecord struct {
	ID    string   `json:"id"`
	User  string   `json:"user"`
	Pool  string   `json:"pool"`
	State JobState `json:"state"`
	// Number is the job's queue number, ComfyUI's "number" (the SUBMIT
	// stream sequence of the job, so it grows across restarts).
	Number    uint64 `json:"number"`
	SubmitSeq uint64 `json:"submit_seq"`
	// ClientNumber and Front are the participant's priority fields (see
	// Job); Bumped is set by the instructor to run the job first.
	ClientNumber *float64 `json:"client_number,omitempty"`
	Front        bool     `json:"front,omitempty"`
	Bumped       bool     `json:"bumped,omitempty"`
	// BumpedAt orders bumped jobs (earlier bumps run first).
	BumpedAt time.Time `json:"bumped_at,omitzero"`

	ClientID         string          `json:"client_id,omitempty"`
	Prompt           json.RawMessage `json:"prompt"`
	ExtraData        json.RawMessage `json:"extra_data,omitempty"`
	OutputsToExecute []string        `json:"outputs_to_execute"`
	Inputs           []InputFile     `json:"inputs,omitempty"`

	CreatedAt    time.Time `json:"created_at"`
	DispatchedAt time.Time `json:"dispatched_at,omitzero"`
	StartedAt    time.Time `json:"started_at,omitzero"`
	FinishedAt   time.Time `json:"finished_at,omitzero"`

	// Releases counts tickets released for this job.
	Releases int `json:"releases,omitempty"`
	// Attempt counts claims that were answered "go"; reports of an older
	// attempt are ignored.
	Attempt int    `json:"attempt,omitempty"`
	Agent   string `json:"agent,omitempty"`
	Slot    string `json:"slot,omitempty"`
	// AgentBoot is the boot id of the agent process holding the attempt.
	AgentBoot string `json:"agent_boot,omitempty"`

	// Outputs maps node id → the node's UI output, with the participant's
	// own file names (ComfyUI history "outputs").
	Outputs map[string]json.RawMessage `json:"outputs,omitempty"`
	// Meta is ComfyUI history "meta" for the output nodes.
	Meta map[string]json.RawMessage `json:"meta,omitempty"`
	// Messages are ComfyUI history status messages, [event, data] pairs.
	Messages []json.RawMessage `json:"messages,omitempty"`
	// Error is ComfyUI's execution_error payload when the job failed.
	Error json.RawMessage `json:"error,omitempty"`
	// Reason is a human-readable reason for failed, cancelled and
	// interrupted jobs.
	Reason string `json:"reason,omitempty"`
}

// Key is the record's JOBS key.
func (r *JobRecord) Key() string { return JobKey(r.User, r.ID) }
