package scheduler

import (
	"container/heap"
	"container/list"
	"slices"
)

// Scheduler holds the queued jobs of every pool and picks the next one by
// the current policy. It is not safe for concurrent use: the dispatcher
// owns it (the broker's core goroutine).
type Scheduler struct {
	policy     Policy
	maxRunning int
	pools      map[string]*pool
	byUser     map[string][]*userQueue // user → their queues (one per pool)
	running    map[string]int          // user → jobs holding a slot
	userCaps   map[string]int          // user → their own cap, where set
	queued     int
}

// Config configures a Scheduler.
type Config struct {
	// Policy is the initial policy (default round-robin).
	Policy Policy
	// MaxRunningPerUser caps each user's jobs holding a slot at once,
	// across all pools (0: no cap). SetMaxRunning gives a user their own.
	MaxRunningPerUser int
}

// New returns an empty scheduler.
func New(cfg Config) *Scheduler {
	if cfg.Policy == "" {
		cfg.Policy = RoundRobin
	}
	return &Scheduler{
		policy: cfg.Policy, maxRunning: cfg.MaxRunningPerUser,
		pools: map[string]*pool{}, byUser: map[string][]*userQueue{}, running: map[string]int{},
		userCaps: map[string]int{},
	}
}

// pool is one pool's queues and the three orders over its eligible users
// (kept all the time, so switching policy takes effect at once).
type pool struct {
	users  map[string]*userQueue
	ring   *list.List // round-robin turn order
	fifo   userHeap   // by the head's submission order
	bumped userHeap   // users whose head is bumped, by bump order
}

type userQueue struct {
	user     string
	pool     *pool
	jobs     []Item // in the user's own order (Item.before)
	ringElem *list.Element
	fifoIdx  int
	bumpIdx  int
}

func (u *userQueue) head() Item { return u.jobs[0] }

// Policy is the current policy.
func (s *Scheduler) Policy() Policy { return s.policy }

// SetPolicy switches the policy; the next decision uses it.
func (s *Scheduler) SetPolicy(p Policy) { s.policy = p }

// MaxRunningPerUser is the default per-user cap (0: none).
func (s *Scheduler) MaxRunningPerUser() int { return s.maxRunning }

// SetMaxRunning gives user their own cap on jobs holding a slot (n > 0),
// or puts them back on the default (n <= 0). A lower cap does not stop
// what already runs; it keeps the user out of the choice until they are
// under it.
func (s *Scheduler) SetMaxRunning(user string, n int) {
	if n > 0 {
		if s.userCaps[user] == n {
			return
		}
		s.userCaps[user] = n
	} else {
		if _, ok := s.userCaps[user]; !ok {
			return
		}
		delete(s.userCaps, user)
	}
	s.updateUser(user)
}

// MaxRunning is the cap that applies to user (0: none).
func (s *Scheduler) MaxRunning(user string) int {
	if n, ok := s.userCaps[user]; ok {
		return n
	}
	return s.maxRunning
}

// Len is the number of queued jobs in all pools.
func (s *Scheduler) Len() int { return s.queued }

// PoolLen is the number of queued jobs of a pool.
func (s *Scheduler) PoolLen(name string) int {
	p := s.pools[name]
	if p == nil {
		return 0
	}
	n := 0
	for _, u := range p.users {
		n += len(u.jobs)
	}
	return n
}

// Pools lists the pools that have queued jobs, sorted.
func (s *Scheduler) Pools() []string {
	var out []string
	for name, p := range s.pools {
		if len(p.users) > 0 {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Running is how many of a user's jobs hold a slot.
func (s *Scheduler) Running(user string) int { return s.running[user] }

// Push queues a job. Pushing a job that is already queued is a no-op.
func (s *Scheduler) Push(it Item) {
	p := s.pools[it.Pool]
	if p == nil {
		p = &pool{users: map[string]*userQueue{}, ring: list.New()}
		s.pools[it.Pool] = p
	}
	u := p.users[it.User]
	if u == nil {
		u = &userQueue{user: it.User, pool: p, fifoIdx: -1, bumpIdx: -1}
		p.users[it.User] = u
		s.byUser[it.User] = append(s.byUser[it.User], u)
	}
	for _, j := range u.jobs {
		if j.JobID == it.JobID {
			return
		}
	}
	i, _ := slices.BinarySearchFunc(u.jobs, it, func(a, b Item) int {
		if a.before(b) {
			return -1
		}
		return 1
	})
	u.jobs = slices.Insert(u.jobs, i, it)
	s.queued++
	s.update(u)
}

// Remove drops a queued job (cancelled, or claimed through a stray
// ticket). It reports whether the job was queued.
func (s *Scheduler) Remove(pool, user, jobID string) bool {
	p := s.pools[pool]
	if p == nil {
		return false
	}
	u := p.users[user]
	if u == nil {
		return false
	}
	i := slices.IndexFunc(u.jobs, func(it Item) bool { return it.JobID == jobID })
	if i < 0 {
		return false
	}
	u.jobs = slices.Delete(u.jobs, i, i+1)
	s.queued--
	s.update(u)
	return true
}

// Bump marks a queued job bumped with the given order (earlier bumps run
// first) and moves it to the front of its user's queue.
func (s *Scheduler) Bump(pool, user, jobID string, order uint64) bool {
	p := s.pools[pool]
	if p == nil || p.users[user] == nil {
		return false
	}
	u := p.users[user]
	i := slices.IndexFunc(u.jobs, func(it Item) bool { return it.JobID == jobID })
	if i < 0 {
		return false
	}
	it := u.jobs[i]
	u.jobs = slices.Delete(u.jobs, i, i+1)
	s.queued--
	it.Bump = order
	s.Push(it)
	return true
}

// Occupy records that one more of user's jobs holds a slot (a job found
// dispatched or running after a restart).
func (s *Scheduler) Occupy(user string) {
	s.running[user]++
	s.updateUser(user)
}

// Release records that one of user's jobs stopped holding a slot.
func (s *Scheduler) Release(user string) {
	if s.running[user] > 0 {
		s.running[user]--
	}
	if s.running[user] == 0 {
		delete(s.running, user)
	}
	s.updateUser(user)
}

// Next removes and returns the job the pool runs next, by the current
// policy, and counts it as holding a slot (Release undoes that). It
// returns false when no eligible job waits.
func (s *Scheduler) Next(poolName string) (Item, bool) {
	p := s.pools[poolName]
	if p == nil {
		return Item{}, false
	}
	var u *userQueue
	switch {
	case s.policy == FIFO && p.fifo.Len() > 0:
		u = p.fifo[0]
	case s.policy == Priority && p.bumped.Len() > 0:
		u = p.bumped[0]
	case p.ring.Len() > 0:
		u = p.ring.Front().Value.(*userQueue)
	default:
		return Item{}, false
	}
	it := u.jobs[0]
	u.jobs = slices.Delete(u.jobs, 0, 1)
	s.queued--
	// The user had their turn: to the back of the round.
	if u.ringElem != nil {
		p.ring.MoveToBack(u.ringElem)
	}
	s.running[u.user]++
	s.updateUser(u.user)
	return it, true
}

func (s *Scheduler) eligible(u *userQueue) bool {
	if len(u.jobs) == 0 {
		return false
	}
	limit := s.MaxRunning(u.user)
	return limit == 0 || s.running[u.user] < limit
}

func (s *Scheduler) updateUser(user string) {
	// update drops an emptied queue from byUser in place, shifting the
	// later ones down: walk backwards so every queue is seen once (a user
	// with queues in several pools).
	qs := s.byUser[user]
	for i := len(qs) - 1; i >= 0; i-- {
		s.update(qs[i])
	}
}

// update puts u into, or takes it out of, its pool's orders.
func (s *Scheduler) update(u *userQueue) {
	p := u.pool
	ok := s.eligible(u)
	switch {
	case ok && u.ringElem == nil:
		u.ringElem = p.ring.PushBack(u)
	case !ok && u.ringElem != nil:
		p.ring.Remove(u.ringElem)
		u.ringElem = nil
	}
	p.fifo.place(u, ok, func(u *userQueue) *int { return &u.fifoIdx }, func(a, b *userQueue) bool { return a.head().Seq < b.head().Seq })
	p.bumped.place(u, ok && u.head().Bump != 0, func(u *userQueue) *int { return &u.bumpIdx }, func(a, b *userQueue) bool { return a.head().Bump < b.head().Bump })
	if len(u.jobs) == 0 {
		delete(p.users, u.user)
		qs := s.byUser[u.user]
		qs = slices.DeleteFunc(qs, func(q *userQueue) bool { return q == u })
		if len(qs) == 0 {
			delete(s.byUser, u.user)
		} else {
			s.byUser[u.user] = qs
		}
	}
}

// userHeap is a min-heap of users; the index of each user in it lives in
// the user (so membership changes are O(log n)).
type userHeap []*userQueue

type heapAdapter struct {
	h    *userHeap
	idx  func(*userQueue) *int
	less func(a, b *userQueue) bool
}

func (a heapAdapter) Len() int           { return len(*a.h) }
func (a heapAdapter) Less(i, j int) bool { return a.less((*a.h)[i], (*a.h)[j]) }
func (a heapAdapter) Swap(i, j int) {
	h := *a.h
	h[i], h[j] = h[j], h[i]
	*a.idx(h[i]) = i
	*a.idx(h[j]) = j
}
func (a heapAdapter) Push(x any) {
	u := x.(*userQueue)
	*a.idx(u) = len(*a.h)
	*a.h = append(*a.h, u)
}
func (a heapAdapter) Pop() any {
	h := *a.h
	u := h[len(h)-1]
	*a.h = h[:len(h)-1]
	*a.idx(u) = -1
	return u
}

func (h *userHeap) Len() int { return len(*h) }

// place makes u's membership in the heap match in, fixing its position if
// its head changed.
func (h *userHeap) place(u *userQueue, in bool, idx func(*userQueue) *int, less func(a, b *userQueue) bool) {
	a := heapAdapter{h: h, idx: idx, less: less}
	i := *idx(u)
	switch {
	case in && i < 0:
		heap.Push(a, u)
	case in:
		heap.Fix(a, i)
	case i >= 0:
		heap.Remove(a, i)
	}
}
