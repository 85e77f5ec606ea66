package scheduler

import (
	"container/heap"
	"maps"
	"slices"
	"time"
)

// Arrival is a job entering the queue at a simulated time.
type Arrival struct {
	At       time.Duration
	Item     Item
	Duration time.Duration // how long it runs once started
}

// SimConfig is a simulated workshop: the pools and their slots, a policy,
// caps, and the jobs that arrive.
type SimConfig struct {
	// Pools maps each pool to its number of slots. A job runs only in its
	// own pool (Item.Pool). Nil: every pool the arrivals name has Slots.
	Pools map[string]int
	Slots int
	// Policy, MaxRunningPerUser and UserCaps configure the scheduler
	// (UserCaps through SetMaxRunning). Caps count across all pools.
	Policy            Policy
	MaxRunningPerUser int
	UserCaps          map[string]int
	Arrivals          []Arrival
}

// SimJob is what happened to one job.
type SimJob struct {
	Item    Item
	Arrived time.Duration
	Started time.Duration
	Ended   time.Duration
}

// Wait is how long the job queued.
func (j SimJob) Wait() time.Duration { return j.Started - j.Arrived }

// Simulate runs the real scheduler against simulated time: at each instant
// finished jobs free their slots, arrivals are queued, and the free slots
// of each pool (in name order, until none can take a job) take the
// policy's next job. It returns every job in start order; a job whose pool
// has no slots never starts.
func Simulate(cfg SimConfig) []SimJob {
	s := New(Config{Policy: cfg.Policy, MaxRunningPerUser: cfg.MaxRunningPerUser})
	for u, n := range cfg.UserCaps {
		s.SetMaxRunning(u, n)
	}
	arrivals := slices.Clone(cfg.Arrivals)
	slices.SortStableFunc(arrivals, func(a, b Arrival) int { return int(a.At - b.At) })
	free := map[string]int{}
	for p, n := range cfg.Pools {
		free[p] = n
	}
	if cfg.Pools == nil {
		for _, a := range arrivals {
			free[a.Item.Pool] = cfg.Slots
		}
	}
	pools := slices.Sorted(maps.Keys(free))
	durations := map[string]time.Duration{}
	arrived := map[string]time.Duration{}
	var running endHeap
	var out []SimJob
	for i := 0; i < len(arrivals) || running.Len() > 0; {
		// The next instant: an arrival or a completion, whichever first.
		var now time.Duration
		switch {
		case running.Len() == 0:
			now = arrivals[i].At
		case i >= len(arrivals):
			now = running[0].Ended
		default:
			now = min(arrivals[i].At, running[0].Ended)
		}
		for running.Len() > 0 && running[0].Ended <= now {
			j := heap.Pop(&running).(SimJob)
			s.Release(j.Item.User)
			free[j.Item.Pool]++
		}
		for i < len(arrivals) && arrivals[i].At <= now {
			a := arrivals[i]
			durations[a.Item.JobID], arrived[a.Item.JobID] = a.Duration, a.At
			s.Push(a.Item)
			i++
		}
		for _, p := range pools {
			for free[p] > 0 {
				it, ok := s.Next(p)
				if !ok {
					break
				}
				free[p]--
				j := SimJob{Item: it, Arrived: arrived[it.JobID], Started: now, Ended: now + durations[it.JobID]}
				heap.Push(&running, j)
				out = append(out, j)
			}
		}
	}
	return out
}

type endHeap []SimJob

func (h endHeap) Len() int           { return len(h) }
func (h endHeap) Less(i, j int) bool { return h[i].Ended < h[j].Ended }
func (h endHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *endHeap) Push(x any)        { *h = append(*h, x.(SimJob)) }
func (h *endHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Jain is Jain's fairness index of xs: 1 when all are equal, 1/n when one
// has everything.
func Jain(xs []float64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += x
		sq += x * x
	}
	if sq == 0 {
		return 1
	}
	return sum * sum / (float64(len(xs)) * sq)
}
