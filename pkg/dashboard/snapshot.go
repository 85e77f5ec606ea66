package dashboard

import (
	"sort"
	"time"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/wire"
)

// Snapshot is the dashboard's picture of the workshop at one moment: what
// the page draws, what GET <prefix>api/snapshot answers and what
// `atelier-broker status` prints.
type Snapshot struct {
	At time.Time `json:"at"`
	// API says whether the broker API answered the last "queues" request;
	// Paused and Policy are only known when it did.
	API    bool   `json:"api"`
	Paused bool   `json:"paused"`
	Policy string `json:"policy,omitempty"`
	// Catalogs is the number of agents whose catalog the broker knows
	// (-1: unknown).
	Catalogs int `json:"catalogs"`

	Totals Totals       `json:"totals"`
	Pools  []PoolDepth  `json:"pools"`
	Users  []UserDepth  `json:"users"`
	Queue  []JobView    `json:"queue"`
	Agents []AgentView  `json:"agents"`
	Recent []JobView    `json:"recent"`
	Failed []JobView    `json:"failed"`
	Depth  []DepthPoint `json:"depth"`
	Hourly []HourCount  `json:"hourly"`
}

// Totals are the headline figures.
type Totals struct {
	Queued     int `json:"queued"`
	Dispatched int `json:"dispatched"`
	Running    int `json:"running"`
	Agents     int `json:"agents"`
	Slots      int `json:"slots"`
	BusySlots  int `json:"busy_slots"`
	// DoneLastHour and FailedLastHour count jobs that finished in the
	// last 60 minutes: the current throughput.
	DoneLastHour   int `json:"done_last_hour"`
	FailedLastHour int `json:"failed_last_hour"`
}

// PoolDepth is one GPU pool's queue and capacity.
type PoolDepth struct {
	Pool       string `json:"pool"`
	Queued     int    `json:"queued"`
	Dispatched int    `json:"dispatched"`
	Running    int    `json:"running"`
	Slots      int    `json:"slots"`
	BusySlots  int    `json:"busy_slots"`
}

// UserDepth is one participant's queue, and how their finished jobs went.
type UserDepth struct {
	User       string `json:"user"`
	Queued     int    `json:"queued"`
	Dispatched int    `json:"dispatched"`
	Running    int    `json:"running"`
	Succeeded  int    `json:"succeeded"`
	Failed     int    `json:"failed"`
}

// JobView is one job as the dashboard lists it.
type JobView struct {
	ID       string        `json:"id"`
	User     string        `json:"user"`
	Pool     string        `json:"pool"`
	State    wire.JobState `json:"state"`
	Number   uint64        `json:"number"`
	Position int           `json:"position,omitempty"`
	Bumped   bool          `json:"bumped,omitempty"`
	Attempt  int           `json:"attempt,omitempty"`
	Agent    string        `json:"agent,omitempty"`
	Slot     string        `json:"slot,omitempty"`

	CreatedAt  time.Time `json:"created_at"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// WaitS is the time from submission to start (or until now, for a job
	// still waiting); RunS from start to the end (or now).
	WaitS float64 `json:"wait_s"`
	RunS  float64 `json:"run_s,omitempty"`

	Progress *Progress   `json:"progress,omitempty"`
	Outputs  []OutputRef `json:"outputs,omitempty"`
	// Error is ComfyUI's exception message (or the broker's reason) of a
	// failed, cancelled or interrupted job.
	Error string `json:"error,omitempty"`
}

// Progress is the live progress of a running job (from evt.* messages).
type Progress struct {
	Value int    `json:"value"`
	Max   int    `json:"max"`
	Node  string `json:"node,omitempty"`
}

// OutputRef is one output file of a job.
type OutputRef struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder,omitempty"`
	Type      string `json:"type"`
	// Image says a thumbnail can be drawn.
	Image bool `json:"image"`
}

// AgentView is one agent with its GPU slots.
type AgentView struct {
	Agent    string `json:"agent"`
	Pool     string `json:"pool"`
	Version  string `json:"version,omitempty"`
	Draining bool   `json:"draining,omitempty"`
	// Lost is set when the heartbeat stopped (older than AgentLostAfter).
	Lost         bool       `json:"lost,omitempty"`
	HeartbeatAge float64    `json:"heartbeat_age_s"`
	StartedAt    time.Time  `json:"started_at,omitzero"`
	ScratchBytes int64      `json:"scratch_bytes,omitempty"`
	Slots        []SlotView `json:"slots"`
}

// SlotView is one GPU slot.
type SlotView struct {
	ID          string         `json:"id"`
	GPU         string         `json:"gpu,omitempty"`
	State       wire.SlotState `json:"state"`
	JobID       string         `json:"job_id,omitempty"`
	User        string         `json:"user,omitempty"`
	VRAMTotal   int64          `json:"vram_total,omitempty"`
	VRAMFree    int64          `json:"vram_free,omitempty"`
	Utilization float64        `json:"utilization"`
	Progress    *Progress      `json:"progress,omitempty"`
}

// DepthPoint is the queue depth at one moment (unix milliseconds).
type DepthPoint struct {
	T       int64 `json:"t"`
	Waiting int   `json:"waiting"` // queued + dispatched
	Running int   `json:"running"`
}

// HourCount is how many jobs finished in one hour.
type HourCount struct {
	Hour      time.Time `json:"hour"`
	Succeeded int       `json:"succeeded"`
	Failed    int       `json:"failed"`
}

// FromStatus is the part of a Snapshot the broker's GET /api/status
// carries, for `atelier-broker status` without instructor credentials.
func FromStatus(st broker.Status, now time.Time) Snapshot {
	s := Snapshot{At: now, Catalogs: st.Catalogs, API: true, Paused: st.Paused, Policy: st.Policy}
	pools := map[string]*PoolDepth{}
	pool := func(p string) *PoolDepth {
		if pools[p] == nil {
			pools[p] = &PoolDepth{Pool: p}
		}
		return pools[p]
	}
	for p, n := range st.Queued {
		pool(p).Queued += n
		s.Totals.Queued += n
	}
	for p, n := range st.InFlight {
		// The status API does not split dispatched from running.
		pool(p).Running += n
		s.Totals.Running += n
	}
	for _, hb := range st.Agents {
		a := AgentView{Agent: hb.Agent, Pool: hb.Pool, Version: hb.Version, Draining: hb.Draining,
			HeartbeatAge: now.Sub(hb.At).Seconds(), StartedAt: hb.StartedAt, ScratchBytes: hb.ScratchBytes}
		for _, sl := range hb.Slots {
			a.Slots = append(a.Slots, slotView(sl))
			countSlot(pool(hb.Pool), &s.Totals, sl)
		}
		s.Agents = append(s.Agents, a)
	}
	s.Totals.Agents = len(s.Agents)
	for u, us := range st.Users {
		s.Users = append(s.Users, UserDepth{User: u, Queued: us.Queued, Running: us.Running})
	}
	s.Totals.DoneLastHour = -1 // unknown from the status API
	s.Totals.FailedLastHour = -1
	for _, p := range pools {
		s.Pools = append(s.Pools, *p)
	}
	s.sort()
	return s
}

func slotView(sl wire.SlotStatus) SlotView {
	return SlotView{ID: sl.ID, GPU: sl.GPU, State: sl.State, JobID: sl.JobID, User: sl.User,
		VRAMTotal: sl.VRAMTotal, VRAMFree: sl.VRAMFree, Utilization: sl.Utilization}
}

func countSlot(p *PoolDepth, t *Totals, sl wire.SlotStatus) {
	if sl.State == wire.SlotDown {
		return
	}
	p.Slots++
	t.Slots++
	if sl.State == wire.SlotBusy {
		p.BusySlots++
		t.BusySlots++
	}
}

// sort puts the lists in their display order.
func (s *Snapshot) sort() {
	sort.Slice(s.Pools, func(i, j int) bool { return s.Pools[i].Pool < s.Pools[j].Pool })
	sort.Slice(s.Users, func(i, j int) bool { return s.Users[i].User < s.Users[j].User })
	sort.Slice(s.Agents, func(i, j int) bool { return s.Agents[i].Agent < s.Agents[j].Agent })
}
