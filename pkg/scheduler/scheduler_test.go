package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func item(user string, seq uint64) Item {
	return Item{JobID: fmt.Sprintf("%s-%d", user, seq), User: user, Pool: "p", Seq: seq}
}

func drain(s *Scheduler, pool string) []string {
	var out []string
	for {
		it, ok := s.Next(pool)
		if !ok {
			return out
		}
		out = append(out, it.JobID)
	}
}

func TestRoundRobinServesUsersInTurn(t *testing.T) {
	t.Parallel()
	s := New(Config{})
	for i := uint64(1); i <= 4; i++ {
		s.Push(item("a", i))
	}
	s.Push(item("b", 10))
	s.Push(item("c", 11))
	s.Push(item("c", 12))
	require.Equal(t, 7, s.Len())
	require.Equal(t, []string{"a-1", "b-10", "c-11", "a-2", "c-12", "a-3", "a-4"}, drain(s, "p"))
	require.Zero(t, s.Len())
	require.Equal(t, 4, s.Running("a"))
}

func TestFIFOFollowsSubmissionOrder(t *testing.T) {
	t.Parallel()
	s := New(Config{Policy: FIFO})
	s.Push(item("a", 3))
	s.Push(item("b", 1))
	s.Push(item("a", 2))
	s.Push(item("c", 4))
	require.Equal(t, []string{"b-1", "a-2", "a-3", "c-4"}, drain(s, "p"))
}

func TestPriorityRunsBumpedJobsFirstThenRoundRobin(t *testing.T) {
	t.Parallel()
	s := New(Config{Policy: Priority})
	for i := uint64(1); i <= 3; i++ {
		s.Push(item("a", i))
		s.Push(item("b", 10+i))
	}
	s.Push(Item{JobID: "demo", User: "instructor", Pool: "p", Seq: 99, Bump: 1})
	require.True(t, s.Bump("p", "b", "b-13", 2))
	require.False(t, s.Bump("p", "b", "nope", 3))
	require.Equal(t, []string{"demo", "b-13", "a-1", "b-11", "a-2", "b-12", "a-3"}, drain(s, "p"))
}

func TestSwitchingPolicyTakesEffectAtOnce(t *testing.T) {
	t.Parallel()
	s := New(Config{})
	for i := uint64(1); i <= 3; i++ {
		s.Push(item("a", i))
	}
	s.Push(item("b", 10))
	it, _ := s.Next("p")
	require.Equal(t, "a-1", it.JobID)
	s.SetPolicy(FIFO)
	require.Equal(t, []string{"a-2", "a-3", "b-10"}, drain(s, "p"))
}

func TestUsersOwnOrderHonoursNumberAndFront(t *testing.T) {
	t.Parallel()
	s := New(Config{})
	s.Push(Item{JobID: "late", User: "a", Pool: "p", Seq: 1, Priority: 5})
	s.Push(Item{JobID: "normal", User: "a", Pool: "p", Seq: 2, Priority: 3})
	s.Push(Item{JobID: "front", User: "a", Pool: "p", Seq: 3, Priority: -1})
	require.Equal(t, []string{"front", "normal", "late"}, drain(s, "p"))
}

func TestCapTakesAUserOutOfTheRound(t *testing.T) {
	t.Parallel()
	s := New(Config{MaxRunningPerUser: 2})
	for i := uint64(1); i <= 4; i++ {
		s.Push(item("a", i))
	}
	s.Push(item("b", 10))
	require.Equal(t, []string{"a-1", "b-10", "a-2"}, drain(s, "p"), "a stops at two running")
	s.Release("a")
	it, ok := s.Next("p")
	require.True(t, ok)
	require.Equal(t, "a-3", it.JobID)
	_, ok = s.Next("p")
	require.False(t, ok)
}

func TestRemoveAndOrder(t *testing.T) {
	t.Parallel()
	s := New(Config{})
	for i := uint64(1); i <= 3; i++ {
		s.Push(item("a", i))
	}
	s.Push(item("b", 10))
	s.Push(item("b", 10)) // a duplicate is a no-op
	require.True(t, s.Remove("p", "a", "a-2"))
	require.False(t, s.Remove("p", "a", "a-2"))
	order := s.Order("p", 0)
	var ids []string
	for _, it := range order {
		ids = append(ids, it.JobID)
	}
	require.Equal(t, []string{"a-1", "b-10", "a-3"}, ids)
	require.Equal(t, ids, drain(s, "p"), "Order predicts Next")
	require.Equal(t, []string(nil), s.Pools())
}

// The workshop scenario of issue 4: 4 slots, 1 s jobs, user A queues 100
// jobs at t=0, 19 others one each at t=1 s.
func workshop() []Arrival {
	var a []Arrival
	for i := range 100 {
		a = append(a, Arrival{At: 0, Duration: time.Second, Item: Item{JobID: fmt.Sprintf("A-%d", i), User: "A", Pool: "p", Seq: uint64(i + 1)}})
	}
	for u := range 19 {
		a = append(a, Arrival{At: time.Second, Duration: time.Second, Item: Item{JobID: fmt.Sprintf("U%d", u), User: fmt.Sprintf("u%02d", u), Pool: "p", Seq: uint64(200 + u)}})
	}
	return a
}

func maxWaitOfOthers(jobs []SimJob) time.Duration {
	var worst time.Duration
	for _, j := range jobs {
		if j.Item.User != "A" {
			worst = max(worst, j.Wait())
		}
	}
	return worst
}

func TestWorkshopScenario(t *testing.T) {
	t.Parallel()
	rr := Simulate(SimConfig{Slots: 4, Policy: RoundRobin, Arrivals: workshop()})
	require.Len(t, rr, 119)
	// Goal: at most ceil(20/4)+1 job durations.
	require.LessOrEqual(t, maxWaitOfOthers(rr), 6*time.Second)

	fifo := Simulate(SimConfig{Slots: 4, Policy: FIFO, Arrivals: workshop()})
	require.Len(t, fifo, 119)
	require.Greater(t, maxWaitOfOthers(fifo), 20*time.Second, "FIFO makes everyone wait behind A")
}

// Thousands of random interleavings of every operation, checked against
// the invariants: no job lost, none dispatched twice, caps never exceeded,
// and under round-robin a waiting user is served within one round.
func TestRandomInterleavingsKeepInvariants(t *testing.T) {
	t.Parallel()
	for seed := range uint64(2000) {
		r := rand.New(rand.NewPCG(seed, 7))
		cap := r.IntN(3) // 0: no cap
		policy := []Policy{RoundRobin, FIFO, Priority}[r.IntN(3)]
		s := New(Config{Policy: policy, MaxRunningPerUser: cap})
		users := []string{"a", "b", "c", "d", "e"}[:2+r.IntN(4)]

		queued := map[string]Item{}    // what the model says is queued
		running := map[string]string{} // job → user
		runningOf := map[string]int{}
		done := map[string]bool{}
		// picksSince counts, for each user with a queued job, the picks
		// of others since the user was last served or began waiting.
		picksSince := map[string]int{}
		var seq uint64

		for step := range 200 {
			switch op := r.IntN(10); {
			case op < 4:
				seq++
				u := users[r.IntN(len(users))]
				it := Item{JobID: fmt.Sprintf("j%d", seq), User: u, Pool: "p", Seq: seq, Priority: float64(r.IntN(3))}
				if r.IntN(10) == 0 {
					it.Bump = seq
				}
				s.Push(it)
				queued[it.JobID] = it
			case op < 7:
				it, ok := s.Next("p")
				if !ok {
					// Nothing eligible: every queued job's user is at the cap.
					for _, q := range queued {
						require.True(t, cap > 0 && runningOf[q.User] >= cap, "seed %d step %d: %s waits but Next gave nothing", seed, step, q.JobID)
					}
					continue
				}
				_, wasQueued := queued[it.JobID]
				require.True(t, wasQueued, "seed %d: %s dispatched but not queued", seed, it.JobID)
				require.False(t, done[it.JobID], "seed %d: %s dispatched twice", seed, it.JobID)
				delete(queued, it.JobID)
				running[it.JobID] = it.User
				runningOf[it.User]++
				if cap > 0 {
					require.LessOrEqual(t, runningOf[it.User], cap, "seed %d: cap exceeded", seed)
				}
				if policy == RoundRobin {
					for u, n := range picksSince {
						if u != it.User {
							picksSince[u] = n + 1
							require.LessOrEqual(t, picksSince[u], len(users)-1,
								"seed %d step %d: %s waited more than one round", seed, step, u)
						}
					}
					delete(picksSince, it.User)
				}
			case op < 9:
				for id, u := range running {
					delete(running, id)
					runningOf[u]--
					done[id] = true
					s.Release(u)
					break
				}
			default:
				for id, it := range queued {
					require.True(t, s.Remove("p", it.User, id))
					delete(queued, id)
					break
				}
			}
			// Users eligible to be served start (or keep) waiting.
			for u := range picksSince {
				if !hasQueued(queued, u) || (cap > 0 && runningOf[u] >= cap) {
					delete(picksSince, u)
				}
			}
			for _, q := range queued {
				if _, ok := picksSince[q.User]; !ok && (cap == 0 || runningOf[q.User] < cap) {
					picksSince[q.User] = 0
				}
			}
			require.Equal(t, len(queued), s.Len(), "seed %d step %d: queued count", seed, step)
		}
	}
}

func hasQueued(q map[string]Item, user string) bool {
	for _, it := range q {
		if it.User == user {
			return true
		}
	}
	return false
}

func TestJain(t *testing.T) {
	t.Parallel()
	require.InDelta(t, 1.0, Jain([]float64{2, 2, 2}), 1e-9)
	require.InDelta(t, 1.0/3, Jain([]float64{6, 0, 0}), 1e-9)
}
