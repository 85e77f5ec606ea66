package scheduler

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func drain(r *RoundRobin, pool string) []string {
	var out []string
	for {
		it, ok := r.Next(pool)
		if !ok {
			return out
		}
		out = append(out, it.JobID)
	}
}

func TestRoundRobinServesUsersInTurn(t *testing.T) {
	t.Parallel()
	r := NewRoundRobin()
	for i := 1; i <= 4; i++ {
		r.Push(Item{JobID: fmt.Sprintf("a%d", i), User: "a", Pool: "p", Seq: uint64(i)})
	}
	r.Push(Item{JobID: "b1", User: "b", Pool: "p", Seq: 10})
	r.Push(Item{JobID: "c1", User: "c", Pool: "p", Seq: 11})
	r.Push(Item{JobID: "c2", User: "c", Pool: "p", Seq: 12})
	require.Equal(t, 7, r.Len("p"))
	require.Equal(t, []string{"a1", "b1", "c1", "a2", "c2", "a3", "a4"}, drain(r, "p"))
	require.Zero(t, r.Len("p"))
}

func TestRoundRobinKeepsSubmissionOrderAndRemoves(t *testing.T) {
	t.Parallel()
	r := NewRoundRobin()
	r.Push(Item{JobID: "a3", User: "a", Pool: "p", Seq: 3})
	r.Push(Item{JobID: "a1", User: "a", Pool: "p", Seq: 1})
	r.Push(Item{JobID: "a2", User: "a", Pool: "p", Seq: 2})
	r.Push(Item{JobID: "a2", User: "a", Pool: "p", Seq: 2}) // duplicate: no-op
	r.Push(Item{JobID: "x1", User: "x", Pool: "other", Seq: 4})
	require.True(t, r.Remove("a2", "p", "a"))
	require.False(t, r.Remove("a2", "p", "a"))
	require.Equal(t, []string{"a1", "a3"}, drain(r, "p"))
	require.Equal(t, []string{"other"}, r.Pools())
	require.Equal(t, []string{"x1"}, drain(r, "other"))
}
