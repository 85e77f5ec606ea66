package scheduler

import (
	"slices"
	"sort"
)

// Order returns up to limit queued jobs of a pool (0: all) in the order
// Next would hand them out if nothing else changed (no new jobs, no caps
// reached): it plays Next's turns on a copy of the queues, so it is for
// listings, not for the hot path.
func (s *Scheduler) Order(poolName string, limit int) []Item {
	p := s.pools[poolName]
	if p == nil {
		return nil
	}
	users := p.turnOrder()
	turns := make([][]Item, 0, len(users))
	for _, u := range users {
		turns = append(turns, slices.Clone(u.jobs))
	}
	var out []Item
	for limit <= 0 || len(out) < limit {
		i := s.policy.pick(turns)
		if i < 0 {
			break
		}
		out = append(out, turns[i][0])
		rest := turns[i][1:]
		// The user had their turn: to the back of the round.
		turns = slices.Delete(turns, i, i+1)
		if len(rest) > 0 {
			turns = append(turns, rest)
		}
	}
	return out
}

// pick is the index of the queue, among users' queues in turn order, whose
// head the policy runs next (-1: none). FIFO takes the oldest head,
// Priority the earliest bumped head and otherwise the turn, as
// RoundRobin always does.
func (policy Policy) pick(turns [][]Item) int {
	if len(turns) == 0 {
		return -1
	}
	best := 0
	switch policy {
	case FIFO:
		for i, q := range turns {
			if q[0].Seq < turns[best][0].Seq {
				best = i
			}
		}
	case Priority:
		for i, q := range turns {
			if b := q[0].Bump; b != 0 && (turns[best][0].Bump == 0 || b < turns[best][0].Bump) {
				best = i
			}
		}
	}
	return best
}

// turnOrder is the pool's users in turn order; users out of the round (at
// their cap) rejoin at the back, by name for a stable answer.
func (p *pool) turnOrder() []*userQueue {
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
	return append(users, rest...)
}
