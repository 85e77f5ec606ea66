package wire

import "time"

// SlotState is what a GPU slot is doing.
type SlotState string

const (
	SlotStarting SlotState = "starting" // ComfyUI not healthy yet
	SlotIdle     SlotState = "idle"     // waiting for a ticket
	SlotBusy     SlotState = "busy"     // running a job
	SlotDown     SlotState = "down"     // ComfyUI unreachable
)

// SlotStatus is one GPU slot in a heartbeat.
type SlotStatus struct {
	ID          string    `json:"id"`
	GPU         string    `json:"gpu,omitempty"`
	State       SlotState `json:"state"`
	JobID       string    `json:"job_id,omitempty"`
	User        string    `json:"user,omitempty"`
	VRAMTotal   int64     `json:"vram_total,omitempty"`
	VRAMFree    int64     `json:"vram_free,omitempty"`
	Utilization float64   `json:"utilization,omitempty"`
}

// Heartbeat is what an agent publishes on hb.<agent> every few seconds.
type Heartbeat struct {
	Agent     string    `json:"agent"`
	Pool      string    `json:"pool"`
	Version   string    `json:"version,omitempty"`
	Boot      string    `json:"boot"` // changes each time the agent starts
	StartedAt time.Time `json:"started_at"`
	At        time.Time `json:"at"`
	Draining  bool      `json:"draining,omitempty"`
	// Prefetch is how many tickets the agent holds beyond its running
	// jobs (one per slot when it stages the next job while one runs); the
	// broker releases that many more tickets for the pool.
	Prefetch int          `json:"prefetch,omitempty"`
	Slots    []SlotStatus `json:"slots"`
	// ScratchBytes is the disk used under the agent's scratch root.
	ScratchBytes int64 `json:"scratch_bytes,omitempty"`
	// Held lists the jobs the agent holds, as HeldKey(user, job): from
	// the moment a slot sends the claim until the run has reported and
	// acknowledged its ticket (claiming, staging, prefetched, running,
	// shipping). The broker gives back a job it recorded as held by this
	// agent when its ticket can no longer come back and the agent does
	// not list it (a claim answered while the agent had given up waiting).
	Held []string `json:"held,omitempty"`
}

// HeldKey names a job in Heartbeat.Held.
func HeldKey(user, job string) string { return user + "/" + job }
