package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/atelier-run/atelier/pkg/wire"
)

// maxEarlyNodes bounds the executing nodes a view keeps for jobs whose
// record it has not seen yet (see userView.earlyNode): normally a few,
// for jobs just claimed; events for jobs that never get a record only
// push each other out.
const maxEarlyNodes = 64

// userView is one participant's cached view of their jobs in JOBS, kept
// current by a KV watch on <user>.>, plus their open WebSockets. The same
// loop that applies JOBS changes relays the live events, so a socket gets
// both in one order.
type userView struct {
	p    *Proxy
	user string

	ctx       context.Context
	cancel    context.CancelFunc
	ready     chan struct{} // closed once the initial state is loaded (or err)
	readyOnce sync.Once     // closes ready (setReady)
	err       error         // set before ready is closed, if loading failed

	mu       sync.Mutex
	jobs     map[string]*jobEntry
	pending  int // jobs in queued, dispatched or running
	reported int // queue_remaining of the last status broadcast
	sockets  map[*socket]struct{}
	bySID    map[string]*socket
	// sent is what each client id was sent per job (see sentState); a
	// client id's entry lives while it has a socket or a job in flight.
	sent map[string]map[string]*sentState
	// submitting are prompts published (or being published) whose record
	// has not reached the view yet: they count against the participant's
	// cap on unfinished prompts. Entries expire (submitTTL) in case a
	// record never comes.
	submitting map[string]time.Time
	// earlyNode is the executing node of jobs whose live events came
	// before their record did (the agent runs a job the moment the broker
	// answers its claim; the JOBS watch may deliver that change later),
	// handed to the job's entry when it arrives. Bounded by
	// maxEarlyNodes.
	earlyNode map[string]string
	// Owned by the loop (run): the JOBS bucket, whether the initial load
	// is over, and the jobs whose record was looked up because their
	// events came first (bounded by maxEarlyNodes).
	kv       jetstream.KeyValue
	loaded   bool
	looked   map[string]struct{}
	reserved int // sockets being accepted
	waiting  int // requests waiting in get for the initial load
	lastUsed time.Time
	closed   bool
}

type jobEntry struct {
	rec wire.JobRecord
	// rev is the JOBS revision rec comes from: a change the watch
	// delivers after the record was read directly (lookUp) is older.
	rev uint64
	// execNode is the node the job's live events last said was executing,
	// for the "executing" message a reconnecting socket gets (§3.1).
	execNode string
}

func newUserView(p *Proxy, user string) *userView {
	v := &userView{
		p:          p,
		user:       user,
		ready:      make(chan struct{}),
		jobs:       map[string]*jobEntry{},
		sockets:    map[*socket]struct{}{},
		bySID:      map[string]*socket{},
		sent:       map[string]map[string]*sentState{},
		submitting: map[string]time.Time{},
		earlyNode:  map[string]string{},
		looked:     map[string]struct{}{},
		lastUsed:   time.Now(),
	}
	v.ctx, v.cancel = context.WithCancel(p.bg)
	return v
}

func (v *userView) idleSince(now time.Time) time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.sockets) > 0 || v.reserved > 0 || v.waiting > 0 {
		return 0
	}
	return now.Sub(v.lastUsed)
}

// submitTTL bounds how long a published prompt counts against the cap
// before its record shows up: the broker takes a prompt in within
// milliseconds, unless it dropped it.
const submitTTL = 30 * time.Second

// reserveSubmit counts prompt id against the participant's cap on
// unfinished prompts (max, 0: none) before it is published; false when the
// participant is at the cap. Counting the ones still on their way keeps
// two prompts sent at once from both passing.
func (v *userView) reserveSubmit(id string, max int) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	for k, at := range v.submitting {
		if now.Sub(at) > submitTTL {
			delete(v.submitting, k)
		}
	}
	if max > 0 && v.pending+len(v.submitting) >= max {
		return false
	}
	v.submitting[id] = now
	return true
}

// releaseSubmit forgets a reservation whose prompt was not published.
func (v *userView) releaseSubmit(id string) {
	v.mu.Lock()
	delete(v.submitting, id)
	v.mu.Unlock()
}

// queueRemaining is ComfyUI's queue_remaining for the participant.
func (v *userView) queueRemaining() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.pending
}

// records returns copies of the records whose state matches keep.
func (v *userView) records(keep func(wire.JobState) bool) []wire.JobRecord {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]wire.JobRecord, 0, len(v.jobs))
	for _, e := range v.jobs {
		if keep(e.rec.State) {
			out = append(out, e.rec)
		}
	}
	return out
}

// record returns the job's record, if known.
func (v *userView) record(id string) (wire.JobRecord, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.jobs[id]
	if !ok {
		return wire.JobRecord{}, false
	}
	return e.rec, true
}
