package scheduler

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// catalogs are the models each pool's agents have; a job names one model
// and goes (as the proxy sends it) to a pool that has it.
var catalogs = map[string][]string{
	"big":   {"flux", "sd15", "sdxl"},
	"small": {"sd15"},
	"cpu":   {"upscale"},
}

// Thousands of random interleavings over several pools, with a running cap
// shared across the pools and users' own caps changing under way, checked
// against the invariants: no job lost, none dispatched twice, a job only
// goes to its pool (one whose catalog has its model), caps never exceeded,
// and under round-robin a user waiting in a pool is served within one
// round of that pool.
func TestRandomInterleavingsAcrossPools(t *testing.T) {
	t.Parallel()
	pools := []string{"big", "cpu", "small"}
	models := []string{"flux", "sd15", "sdxl", "upscale", "video"} // nobody runs video
	for seed := range uint64(2000) {
		r := rand.New(rand.NewPCG(seed, 11))
		defCap := r.IntN(3)
		policy := []Policy{RoundRobin, FIFO, Priority}[r.IntN(3)]
		s := New(Config{Policy: policy, MaxRunningPerUser: defCap})
		users := []string{"a", "b", "c", "d", "e"}[:2+r.IntN(4)]
		caps := map[string]int{} // users' own caps
		capOf := func(u string) int {
			if n, ok := caps[u]; ok {
				return n
			}
			return defCap
		}
		atCap := func(u string, running int) bool { return capOf(u) > 0 && running >= capOf(u) }

		queued := map[string]Item{}   // the model's queued jobs
		model := map[string]string{}  // job → the model it needs
		running := map[string]Item{}  // job → item, while it holds a slot
		runningOf := map[string]int{} // user → jobs holding a slot, all pools
		dispatched := map[string]bool{}
		// picksSince[pool][user] counts the pool's picks of others since
		// the user began waiting there (eligible with a queued job).
		picksSince := map[string]map[string]int{}
		for _, p := range pools {
			picksSince[p] = map[string]int{}
		}
		var seq uint64
		where := func(step int) string { return fmt.Sprintf("seed %d step %d (%s, cap %d)", seed, step, policy, defCap) }

		for step := range 300 {
			switch op := r.IntN(12); {
			case op < 4: // submit
				seq++
				u := users[r.IntN(len(users))]
				m := models[r.IntN(len(models))]
				var able []string
				for _, p := range pools {
					if slices.Contains(catalogs[p], m) {
						able = append(able, p)
					}
				}
				if len(able) == 0 {
					// Refused at submit: no pool can run it.
					continue
				}
				it := Item{JobID: fmt.Sprintf("j%d", seq), User: u, Pool: able[r.IntN(len(able))], Seq: seq, Priority: float64(r.IntN(3))}
				if r.IntN(10) == 0 {
					it.Bump = seq
				}
				s.Push(it)
				queued[it.JobID], model[it.JobID] = it, m
			case op < 8: // a slot of some pool frees up and takes the next job
				p := pools[r.IntN(len(pools))]
				it, ok := s.Next(p)
				if !ok {
					for _, q := range queued {
						if q.Pool == p {
							require.True(t, atCap(q.User, runningOf[q.User]), "%s: %s waits in %s but Next gave nothing", where(step), q.JobID, p)
						}
					}
					continue
				}
				_, wasQueued := queued[it.JobID]
				require.True(t, wasQueued, "%s: %s dispatched but not queued", where(step), it.JobID)
				require.False(t, dispatched[it.JobID], "%s: %s dispatched twice", where(step), it.JobID)
				require.Equal(t, p, it.Pool, "%s: %s went to another pool", where(step), it.JobID)
				require.Contains(t, catalogs[p], model[it.JobID], "%s: %s went to a pool that cannot run it", where(step), it.JobID)
				require.False(t, atCap(it.User, runningOf[it.User]), "%s: %s dispatched over %s's cap %d", where(step), it.JobID, it.User, capOf(it.User))
				delete(queued, it.JobID)
				dispatched[it.JobID] = true
				running[it.JobID] = it
				runningOf[it.User]++
				if policy == RoundRobin {
					for u, n := range picksSince[p] {
						if u != it.User {
							picksSince[p][u] = n + 1
							require.LessOrEqual(t, picksSince[p][u], len(users)-1, "%s: %s waited in %s more than one round", where(step), u, p)
						}
					}
					delete(picksSince[p], it.User)
				}
			case op < 10: // a running job ends
				for _, id := range slices.Sorted(maps.Keys(running)) {
					it := running[id]
					delete(running, id)
					runningOf[it.User]--
					s.Release(it.User)
					break
				}
			case op < 11: // a participant cancels a queued job
				for _, id := range slices.Sorted(maps.Keys(queued)) {
					it := queued[id]
					require.True(t, s.Remove(it.Pool, it.User, id))
					delete(queued, id)
					break
				}
			default: // the registry gives a user their own cap, or takes it away
				u := users[r.IntN(len(users))]
				if n := r.IntN(4); n == 0 {
					delete(caps, u)
					s.SetMaxRunning(u, 0)
				} else {
					caps[u] = n
					s.SetMaxRunning(u, n)
				}
				require.Equal(t, capOf(u), s.MaxRunning(u))
			}
			// Users eligible in a pool start (or keep) waiting there.
			for _, p := range pools {
				for u := range picksSince[p] {
					if !queuedIn(queued, p, u) || atCap(u, runningOf[u]) {
						delete(picksSince[p], u)
					}
				}
				for _, q := range queued {
					if _, ok := picksSince[p][q.User]; q.Pool == p && !ok && !atCap(q.User, runningOf[q.User]) {
						picksSince[p][q.User] = 0
					}
				}
				n := 0
				for _, q := range queued {
					if q.Pool == p {
						n++
					}
				}
				require.Equal(t, n, s.PoolLen(p), "%s: queued in %s", where(step), p)
			}
			require.Equal(t, len(queued), s.Len(), "%s: queued count", where(step))
			for _, u := range users {
				require.Equal(t, runningOf[u], s.Running(u), "%s: %s's running count", where(step), u)
			}
		}
		// Nothing is lost: every queued job comes out of its pool once the
		// running ones end and each taken job ends at once.
		for id, it := range running {
			s.Release(it.User)
			delete(running, id)
		}
		for _, p := range pools {
			for {
				it, ok := s.Next(p)
				if !ok {
					break
				}
				s.Release(it.User)
				require.Contains(t, queued, it.JobID, "seed %d: drained %s, not queued", seed, it.JobID)
				delete(queued, it.JobID)
			}
		}
		require.Empty(t, queued, "seed %d: jobs lost", seed)
		require.Zero(t, s.Len())
	}
}

func queuedIn(q map[string]Item, pool, user string) bool {
	for _, it := range q {
		if it.Pool == pool && it.User == user {
			return true
		}
	}
	return false
}

// Two pools share the participants' running cap: user A queues 40 jobs in
// each pool, others a few; A never holds more slots than the cap across
// both pools, no pool runs more jobs than its slots, and every other user
// starts within one round of their pool.
func TestSimulateTwoPoolsWithASharedCap(t *testing.T) {
	t.Parallel()
	var arrivals []Arrival
	seq := uint64(0)
	add := func(at time.Duration, user, pool string, n int) {
		for range n {
			seq++
			arrivals = append(arrivals, Arrival{At: at, Duration: time.Second,
				Item: Item{JobID: fmt.Sprintf("%s-%s-%d", user, pool, seq), User: user, Pool: pool, Seq: seq}})
		}
	}
	add(0, "A", "big", 40)
	add(0, "A", "small", 40)
	for u := range 6 {
		add(time.Second, fmt.Sprintf("u%d", u), []string{"big", "small"}[u%2], 2)
	}
	add(0, "B", "big", 10) // B has their own, higher cap
	pools := map[string]int{"big": 4, "small": 2}
	jobs := Simulate(SimConfig{Pools: pools, Policy: RoundRobin, MaxRunningPerUser: 2, UserCaps: map[string]int{"B": 3}, Arrivals: arrivals})
	require.Len(t, jobs, len(arrivals), "every job ran")

	// Sweep the timeline: at every start, count what runs.
	for _, j := range jobs {
		at := j.Started
		perPool, perUser := map[string]int{}, map[string]int{}
		for _, o := range jobs {
			if o.Started <= at && at < o.Ended {
				perPool[o.Item.Pool]++
				perUser[o.Item.User]++
			}
		}
		for p, n := range perPool {
			require.LessOrEqual(t, n, pools[p], "pool %s over its slots at %s", p, at)
		}
		for u, n := range perUser {
			limit := 2
			if u == "B" {
				limit = 3
			}
			require.LessOrEqual(t, n, limit, "%s over the cap at %s", u, at)
		}
	}
	// The late users wait at most a round of their pool: with A and B
	// capped, the others share what is left, and no one waits for A's 80.
	for _, j := range jobs {
		if j.Item.User != "A" && j.Item.User != "B" {
			require.LessOrEqual(t, j.Wait(), 4*time.Second, "%s waited %s", j.Item.JobID, j.Wait())
		}
	}
}

// A job whose pool has no slots never starts, and the others are not held
// up by it.
func TestSimulateAPoolWithoutSlots(t *testing.T) {
	t.Parallel()
	jobs := Simulate(SimConfig{Pools: map[string]int{"big": 1}, Arrivals: []Arrival{
		{At: 0, Duration: time.Second, Item: Item{JobID: "stuck", User: "a", Pool: "gone", Seq: 1}},
		{At: 0, Duration: time.Second, Item: Item{JobID: "runs", User: "a", Pool: "big", Seq: 2}},
	}})
	require.Len(t, jobs, 1)
	require.Equal(t, "runs", jobs[0].Item.JobID)
}

func TestUsersOwnCap(t *testing.T) {
	t.Parallel()
	s := New(Config{MaxRunningPerUser: 1})
	for i := uint64(1); i <= 3; i++ {
		s.Push(item("a", i))
		s.Push(item("b", 10+i))
	}
	s.SetMaxRunning("a", 2)
	require.Equal(t, 2, s.MaxRunning("a"))
	require.Equal(t, 1, s.MaxRunning("b"))
	require.Equal(t, []string{"a-1", "b-11", "a-2"}, drain(s, "p"), "a may hold two slots, b one")
	s.SetMaxRunning("a", 0) // back to the default: a is over it now
	s.Release("a")
	_, ok := s.Next("p")
	require.False(t, ok, "a holds one slot, the default cap")
	s.Release("a")
	it, ok := s.Next("p")
	require.True(t, ok)
	require.Equal(t, "a-3", it.JobID)
}
