package agent

import (
	"slices"
	"strings"
	"sync"
)

// held is a job the agent holds, from the moment a slot asks the broker
// for it until its run has reported and acknowledged. While the claim is
// in flight r is nil; resolved is closed once the claim's answer is known
// (r is then the run, or nil when the claim did not give the job to us).
//
// The broker records a claimed job as running when it answers the claim,
// so an interrupt (a participant's cancel) can arrive before the slot has
// staged the job or even read the answer. The control handler finds the
// job here, waits for the claim to resolve and interrupts the run: a job
// the agent has claimed is interruptible from the first moment.
type held struct {
	key      string // user/job
	resolved chan struct{}
	once     sync.Once
	r        *run // set before resolved is closed
}

// resolve records the claim's outcome (nil: the job is not ours to run).
func (h *held) resolve(r *run) {
	h.once.Do(func() {
		h.r = r
		close(h.resolved)
	})
}

// enter records that a slot claims the job (key: wire.HeldKey); nil if the agent already
// holds it (claiming, prefetched, running, or still reporting).
func (a *Agent) enter(key string) *held {
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	if a.live[key] != nil {
		return nil
	}
	if a.live == nil {
		a.live = map[string]*held{}
	}
	h := &held{key: key, resolved: make(chan struct{})}
	a.live[key] = h
	return h
}

// leave records that the agent no longer holds the job.
func (a *Agent) leave(h *held) {
	h.resolve(nil) // no-op when the claim resolved to a run
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	if a.live[h.key] == h {
		delete(a.live, h.key)
	}
}

// holding returns what the agent holds of a job: by user/job, or by job
// id alone when the request names no user.
func (a *Agent) holding(user, jobID string) *held {
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	if user != "" {
		return a.live[user+"/"+jobID]
	}
	for key, h := range a.live {
		if strings.HasSuffix(key, "/"+jobID) {
			return h
		}
	}
	return nil
}

// heldKeys lists the jobs the agent holds (wire.HeldKey), for the
// heartbeat.
func (a *Agent) heldKeys() []string {
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	keys := make([]string, 0, len(a.live))
	for key := range a.live {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	return keys
}

// Held is the number of jobs the agent holds: being claimed, staged,
// prefetched, running, or finishing (shipping outputs, reporting).
func (a *Agent) Held() int {
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	return len(a.live)
}
