package wire

// ClaimRequest is sent by an agent on claim.<agent> when one of its slots
// received a ticket: "slot S of agent A takes job J".
type ClaimRequest struct {
	JobID string `json:"job_id"`
	User  string `json:"user"`
	Agent string `json:"agent"`
	Slot  string `json:"slot"`
	// Boot identifies the agent process; a claim from a new boot of the
	// agent that held the job means the old attempt died with it.
	Boot string `json:"boot"`
	// Prefetch marks a claim for a slot that is still busy: the broker
	// assigns the job to the slot but records it running only when the
	// agent reports it started.
	Prefetch bool `json:"prefetch,omitempty"`
	// Delivery is the ticket's delivery count (JetStream NumDelivered).
	Delivery uint64 `json:"delivery"`
}

// ClaimAction is the broker's answer to a claim.
type ClaimAction string

const (
	// ClaimGo: run the job; the reply carries it and the attempt number.
	ClaimGo ClaimAction = "go"
	// ClaimSkip: the job is final, cancelled or unknown: ack the ticket
	// and drop it.
	ClaimSkip ClaimAction = "skip"
	// ClaimLater: a live attempt elsewhere holds the job: nak the ticket
	// with a delay so it comes back if that attempt dies.
	ClaimLater ClaimAction = "later"
)

// ClaimReply is the broker's answer to a ClaimRequest.
type ClaimReply struct {
	Action  ClaimAction `json:"action"`
	Reason  string      `json:"reason,omitempty"`
	Attempt int         `json:"attempt,omitempty"`
	Job     *Job        `json:"job,omitempty"`
}
