package scheduler

import (
	"fmt"
	"strings"
)

// Item is a queued job as the scheduler sees it.
type Item struct {
	JobID string
	User  string
	Pool  string
	// Seq is the submission order (the SUBMIT stream sequence).
	Seq uint64
	// Priority is the client's ComfyUI number: lower runs earlier among
	// the user's own jobs. Zero for jobs that did not give one.
	Priority float64
	// Bump orders bumped jobs (0: not bumped; otherwise the order in
	// which they were bumped, earlier first).
	Bump uint64
}

// before is the order of one user's jobs.
func (a Item) before(b Item) bool {
	if (a.Bump != 0) != (b.Bump != 0) {
		return a.Bump != 0
	}
	if a.Bump != b.Bump {
		return a.Bump < b.Bump
	}
	if a.Priority != b.Priority {
		return a.Priority < b.Priority
	}
	return a.Seq < b.Seq
}

// Policy is a scheduling policy.
type Policy string

// The policies.
const (
	RoundRobin Policy = "round-robin"
	FIFO       Policy = "fifo"
	Priority   Policy = "priority"
)

// ParsePolicy checks a policy name.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(strings.ToLower(s)); p {
	case RoundRobin, FIFO, Priority:
		return p, nil
	case "rr", "roundrobin":
		return RoundRobin, nil
	}
	return "", fmt.Errorf("unknown policy %q: want round-robin, fifo or priority", s)
}
