// Package scheduler decides which queued job a pool runs next.
//
// The dispatcher keeps one FIFO queue per user and asks the policy for the
// next job only when a slot frees up, so the order is decided at slot time.
package scheduler

import "container/list"

// Item is a queued job as the scheduler sees it.
type Item struct {
	JobID string
	User  string
	Pool  string
	// Seq orders a user's jobs (the SUBMIT sequence).
	Seq uint64
}

// RoundRobin serves users in turn: each user with queued jobs gets one job
// per round, so a participant who queued fifty variations cannot starve the
// others. Within a user, jobs run in submission order. Not safe for
// concurrent use: the dispatcher owns it.
type RoundRobin struct {
	pools map[string]*poolQueue
	where map[string]*list.Element // job id → element in its user's queue
}

type poolQueue struct {
	users *list.List               // of *userQueue, in turn order
	byID  map[string]*list.Element // user → element of users
}

type userQueue struct {
	user string
	jobs *list.List // of Item, FIFO by Seq
}

// NewRoundRobin returns an empty round-robin scheduler.
func NewRoundRobin() *RoundRobin {
	return &RoundRobin{pools: map[string]*poolQueue{}, where: map[string]*list.Element{}}
}

// Push queues a job at the end of its user's queue. A user who had nothing
// queued joins at the end of the round. Pushing a queued job again is a
// no-op.
func (r *RoundRobin) Push(it Item) {
	if _, ok := r.where[it.JobID]; ok {
		return
	}
	pq := r.pools[it.Pool]
	if pq == nil {
		pq = &poolQueue{users: list.New(), byID: map[string]*list.Element{}}
		r.pools[it.Pool] = pq
	}
	ue := pq.byID[it.User]
	if ue == nil {
		ue = pq.users.PushBack(&userQueue{user: it.User, jobs: list.New()})
		pq.byID[it.User] = ue
	}
	uq := ue.Value.(*userQueue)
	// Keep submission order even when jobs arrive out of order (a restart
	// rebuilding queues while new jobs come in).
	at := uq.jobs.Back()
	for at != nil && at.Value.(Item).Seq > it.Seq {
		at = at.Prev()
	}
	if at == nil {
		r.where[it.JobID] = uq.jobs.PushFront(it)
	} else {
		r.where[it.JobID] = uq.jobs.InsertAfter(it, at)
	}
}

// Next removes and returns the job the pool should run next.
func (r *RoundRobin) Next(pool string) (Item, bool) {
	pq := r.pools[pool]
	if pq == nil || pq.users.Len() == 0 {
		return Item{}, false
	}
	ue := pq.users.Front()
	uq := ue.Value.(*userQueue)
	it := uq.jobs.Remove(uq.jobs.Front()).(Item)
	delete(r.where, it.JobID)
	if uq.jobs.Len() == 0 {
		pq.users.Remove(ue)
		delete(pq.byID, uq.user)
	} else {
		pq.users.MoveToBack(ue)
	}
	return it, true
}

// Remove drops a queued job (cancelled, or claimed through a stray ticket).
func (r *RoundRobin) Remove(jobID string, pool, user string) bool {
	e, ok := r.where[jobID]
	if !ok {
		return false
	}
	delete(r.where, jobID)
	pq := r.pools[pool]
	if pq == nil {
		return false
	}
	ue := pq.byID[user]
	if ue == nil {
		return false
	}
	uq := ue.Value.(*userQueue)
	uq.jobs.Remove(e)
	if uq.jobs.Len() == 0 {
		pq.users.Remove(ue)
		delete(pq.byID, user)
	}
	return true
}

// Len is the number of queued jobs of a pool.
func (r *RoundRobin) Len(pool string) int {
	pq := r.pools[pool]
	if pq == nil {
		return 0
	}
	n := 0
	for e := pq.users.Front(); e != nil; e = e.Next() {
		n += e.Value.(*userQueue).jobs.Len()
	}
	return n
}

// Pools lists the pools that have queued jobs.
func (r *RoundRobin) Pools() []string {
	var out []string
	for name, pq := range r.pools {
		if pq.users.Len() > 0 {
			out = append(out, name)
		}
	}
	return out
}
