package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// Order predicts what Next hands out, under every policy, for random
// queues with bumped jobs; a limit gives the head of the same answer.
func TestOrderPredictsNext(t *testing.T) {
	t.Parallel()
	for _, policy := range []Policy{RoundRobin, FIFO, Priority} {
		for seed := range uint64(50) {
			rng := rand.New(rand.NewPCG(seed, 7))
			s := New(Config{Policy: policy})
			var seq uint64
			for range 1 + rng.IntN(40) {
				seq++
				s.Push(item(fmt.Sprintf("u%d", rng.IntN(5)), seq))
			}
			for _, it := range s.Order("p", 0) {
				if rng.IntN(4) == 0 {
					seq++
					require.True(t, s.Bump("p", it.User, it.JobID, seq))
				}
			}
			order := s.Order("p", 0)
			ids := make([]string, len(order))
			for i, it := range order {
				ids[i] = it.JobID
			}
			limit := 1 + rng.IntN(len(order))
			head := s.Order("p", limit)
			require.Len(t, head, limit, "%s seed %d", policy, seed)
			require.Equal(t, order[:limit], head, "%s seed %d: a limit gives the head", policy, seed)
			require.Equal(t, ids, drain(s, "p"), "%s seed %d: Order predicts Next", policy, seed)
		}
	}
}
