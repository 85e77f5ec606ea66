package testsignal

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestOffSignalsCostNothing(t *testing.T) {
	var s Signal[int]
	for i := range 2 * bufferSize {
		s.Signal(i) // never blocks, never panics
	}
}

func TestWait(t *testing.T) {
	var s Signal[string]
	s.Init()
	go func() {
		s.Signal("a")
		s.Signal("b")
		s.Signal("c")
	}()
	require.Equal(t, "a", s.WaitOrTimeout(t))
	require.Equal(t, "c", s.WaitFor(t, "c", func(v string) bool { return v == "c" }))
	s.RequireEmpty(t)
}
