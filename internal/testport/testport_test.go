package testport

import (
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// Ports handed out are below the ephemeral range, free, consecutive, and
// never handed out twice, also to callers at the same time; a port some
// other listener holds is skipped.
func TestConsecutive(t *testing.T) {
	t.Parallel()
	low := ephemeralLow()
	// A port another listener holds (inside the range the next call
	// tries first) is not handed out.
	mu.Lock()
	if hi == 0 {
		mu.Unlock()
		Consecutive(t, 1)
		mu.Lock()
	}
	held := next
	if held+2 > hi {
		held = lo
	}
	mu.Unlock()
	ln, holdErr := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(held))
	if holdErr == nil {
		defer ln.Close()
	}

	// Eight callers at once, ten calls each.
	var wg sync.WaitGroup
	bases := make([][]int, 8)
	for g := range bases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				b, err := consecutive(3)
				if err != nil {
					return
				}
				bases[g] = append(bases[g], b)
			}
		}()
	}
	wg.Wait()
	seen := map[int]bool{}
	for _, bs := range bases {
		require.Len(t, bs, 10)
		for _, b := range bs {
			for i := range 3 {
				require.False(t, seen[b+i], "port %d handed out twice", b+i)
				seen[b+i] = true
			}
		}
	}
	for p := range seen {
		if low-lowest >= 1000 {
			require.GreaterOrEqual(t, p, lowest)
			require.Less(t, p, low, "below the ephemeral range")
		}
		if holdErr == nil {
			require.NotEqual(t, held, p, "a port another listener holds")
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		require.NoError(t, err, "port %d is free", p)
		l.Close()
	}

	addr := Addr(t)
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	p, _ := strconv.Atoi(port)
	require.False(t, seen[p])
}
