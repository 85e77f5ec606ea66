package wire

import "time"

// Control operations the broker requests of an agent on ctl.agent.<agent>.
const (
	// CtlInterrupt: interrupt JobID if one of the agent's slots runs it
	// (or holds it prefetched: then drop it without running).
	CtlInterrupt = "interrupt"
	// CtlDrain: stop fetching; let running jobs finish up to Deadline,
	// then release them back to the queue.
	CtlDrain = "drain"
	// CtlUndrain: resume fetching.
	CtlUndrain = "undrain"
)

// ControlRequest is a command from the broker to an agent.
type ControlRequest struct {
	Op       string        `json:"op"`
	JobID    string        `json:"job_id,omitempty"`
	User     string        `json:"user,omitempty"`
	Deadline time.Duration `json:"deadline,omitempty"`
}

// ControlReply is the agent's answer.
type ControlReply struct {
	// Done reports whether the command changed anything (the job was
	// found, the agent was not already draining …).
	Done  bool   `json:"done"`
	Error string `json:"error,omitempty"`
}
