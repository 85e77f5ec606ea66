package scheduler

import (
	"slices"
	"sort"
)

// Order returns up to limit queued jobs of a pool in the order the current
// policy would run them if nothing else changed (no new jobs, no caps
// reached). It copies, so it is for listings, not for the hot path.
func (s *Scheduler) Order(poolName string, limit int) []Item {
	p := s.pools[poolName]
	if p == nil {
		return nil
	}
	// Users in turn order; users out of the round (at their cap) rejoin
	// at the back, by name for a stable answer.
	var users []*userQueue
	seen := map[*userQueue]bool{}
	for e := p.ring.Front(); e != nil; e = e.Next() {
		u := e.Value.(*userQueue)
		users = append(users, u)
		seen[u] = true
	}
	var rest []*userQueue
	for _, u := range p.users {
		if !seen[u] {
			rest = append(rest, u)
		}
	}
	sort.Slice(rest, func(i, j int) bool { return rest[i].user < rest[j].user })
	users = append(users, rest...)

	queues := make([][]Item, len(users))
	for i, u := range users {
		queues[i] = slices.Clone(u.jobs)
	}
	var out []Item
	take := func(it Item) bool {
		out = append(out, it)
		return limit > 0 && len(out) >= limit
	}

	if s.policy == Priority {
		var bumped []Item
		for i := range queues {
			n := 0
			for n < len(queues[i]) && queues[i][n].Bump != 0 {
				n++
			}
			bumped = append(bumped, queues[i][:n]...)
			queues[i] = queues[i][n:]
		}
		slices.SortFunc(bumped, func(a, b Item) int { return cmpU64(a.Bump, b.Bump) })
		for _, it := range bumped {
			if take(it) {
				return out
			}
		}
	}
	if s.policy == FIFO {
		for {
			best := -1
			for i, q := range queues {
				if len(q) > 0 && (best < 0 || q[0].Seq < queues[best][0].Seq) {
					best = i
				}
			}
			if best < 0 {
				return out
			}
			it := queues[best][0]
			queues[best] = queues[best][1:]
			if take(it) {
				return out
			}
		}
	}
	for round := 0; ; round++ {
		any := false
		for _, q := range queues {
			if round < len(q) {
				any = true
				if take(q[round]) {
					return out
				}
			}
		}
		if !any {
			return out
		}
	}
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
