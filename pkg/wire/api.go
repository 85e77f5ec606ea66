package wire

import "time"

// Broker API operations, requested on api.broker.<op> by the proxy (for a
// participant), the dashboard and the CLI (for the instructor). The broker
// checks every request against the caller's role: a participant may act
// only on their own jobs; an instructor or admin on anyone's.
const (
	// OpCancel cancels jobs at any stage: queued jobs are dropped,
	// dispatched ones skipped by the agent, running ones interrupted.
	// CancelRequest → CancelReply.
	OpCancel = "cancel"
	// OpInterrupt interrupts a user's running job (ComfyUI's /interrupt:
	// with no job id, whatever of theirs runs). InterruptRequest →
	// CancelReply.
	OpInterrupt = "interrupt"
	// OpForget deletes final jobs from the history (ComfyUI's POST
	// /history delete/clear). ForgetRequest → CancelReply.
	OpForget = "forget"
	// OpBump moves a queued job to the front (priority). BumpRequest →
	// APIReply. Instructor only.
	OpBump = "bump"
	// OpPause and OpResume stop and restart dispatch. Instructor only.
	OpPause  = "pause"
	OpResume = "resume"
	// OpPolicy switches the scheduling policy. PolicyRequest → APIReply.
	OpPolicy = "policy"
	// OpDrain and OpUndrain stop and resume an agent's pulling.
	// DrainRequest → APIReply. Instructor or admin.
	OpDrain   = "drain"
	OpUndrain = "undrain"
	// OpQueues lists the queues. QueuesRequest → QueuesReply.
	OpQueues = "queues"
)

// Role is a caller's role, as the registry knows it.
type Role string

// Roles.
const (
	RoleParticipant Role = "participant"
	RoleInstructor  Role = "instructor"
	RoleAdmin       Role = "admin"
)

// Privileged reports whether the role may act on other users' jobs and
// on the workshop as a whole.
func (r Role) Privileged() bool { return r == RoleInstructor || r == RoleAdmin }

// Caller is who asks the broker. The proxy and the dashboard fill it in
// from the authenticated login; NATS permissions keep participants' own
// clients off api.broker.*.
type Caller struct {
	User string `json:"user"`
	Role Role   `json:"role"`
}

// CancelRequest cancels jobs of User (or of anyone, for a privileged caller
// with User empty).
type CancelRequest struct {
	Caller Caller   `json:"caller"`
	User   string   `json:"user,omitempty"`
	JobIDs []string `json:"job_ids,omitempty"`
	// AllPending cancels every queued or dispatched job of User
	// (ComfyUI's POST /queue {"clear": true}); running jobs stay.
	AllPending bool `json:"all_pending,omitempty"`
	// PendingOnly leaves running jobs alone (ComfyUI's /queue delete only
	// touches pending items).
	PendingOnly bool `json:"pending_only,omitempty"`
}

// InterruptRequest interrupts a running job of User; JobID empty means
// whatever of User's jobs runs.
type InterruptRequest struct {
	Caller Caller `json:"caller"`
	User   string `json:"user"`
	JobID  string `json:"job_id,omitempty"`
}

// ForgetRequest removes final jobs of User from the history; All removes
// every final job of User.
type ForgetRequest struct {
	Caller Caller   `json:"caller"`
	User   string   `json:"user"`
	JobIDs []string `json:"job_ids,omitempty"`
	All    bool     `json:"all,omitempty"`
}

// CancelReply says which jobs the request affected.
type CancelReply struct {
	APIReply
	// Affected are the job ids that were cancelled, interrupted or
	// forgotten.
	Affected []string `json:"affected,omitempty"`
}

// BumpRequest moves a queued job ahead of every non-bumped job.
type BumpRequest struct {
	Caller Caller `json:"caller"`
	User   string `json:"user"`
	JobID  string `json:"job_id"`
}

// PolicyRequest switches the scheduling policy.
type PolicyRequest struct {
	Caller Caller `json:"caller"`
	Policy string `json:"policy"` // round-robin | fifo | priority
}

// DrainRequest drains or undrains an agent.
type DrainRequest struct {
	Caller Caller `json:"caller"`
	Agent  string `json:"agent"`
	// Deadline bounds how long running jobs may finish before they are
	// released back to the queue (0: the agent's default).
	Deadline time.Duration `json:"deadline,omitempty"`
}

// PauseRequest pauses or resumes dispatch.
type PauseRequest struct {
	Caller Caller `json:"caller"`
}

// QueuesRequest asks for the queues.
type QueuesRequest struct {
	Caller Caller `json:"caller"`
}

// QueuedJob is one queued or running job in a QueuesReply.
type QueuedJob struct {
	ID        string    `json:"id"`
	User      string    `json:"user"`
	Pool      string    `json:"pool"`
	State     JobState  `json:"state"`
	Number    uint64    `json:"number"`
	Bumped    bool      `json:"bumped,omitempty"`
	Agent     string    `json:"agent,omitempty"`
	Slot      string    `json:"slot,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Position is the job's place in its pool's dispatch order (1 =
	// next), for queued jobs.
	Position int `json:"position,omitempty"`
}

// QueuesReply is the broker's view of the queues.
type QueuesReply struct {
	APIReply
	Paused bool        `json:"paused"`
	Policy string      `json:"policy"`
	Jobs   []QueuedJob `json:"jobs"`
}

// APIReply is the common part of every broker API answer.
type APIReply struct {
	Error string `json:"error,omitempty"`
	// Code classifies Error: one of the Code constants.
	Code string `json:"code,omitempty"`
}

// Codes of APIReply.Code (pkg/brokerapi maps them to sentinel errors).
const (
	// CodeForbidden: the caller may not do this (a participant acting on
	// another's jobs, or on the workshop; a wrong admin token).
	CodeForbidden = "forbidden"
	// CodeNotFound: no such job in the state the operation needs, or no
	// such agent connected.
	CodeNotFound = "not_found"
	// CodeInvalid: the request is malformed (bad JSON, an invalid name, an
	// unknown policy or operation).
	CodeInvalid = "invalid"
	// CodeInternal: the broker failed to do it (a JetStream write, say).
	CodeInternal = "internal"
)
