// Package testsignal is how code tells its tests what happened: a
// component keeps a struct of Signals, calls Signal at the points a test
// may wait for (a report applied, a ticket released, a periodic check
// run), and a test that called Init waits for them instead of sleeping or
// polling. Signals a test did not Init cost a nil check and nothing else.
// The model is River's test signals.
package testsignal

import (
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
)

// bufferSize is how many signals may wait unread before Signal panics:
// far more than any test produces, so a full buffer means a test forgot
// to stop a component that keeps signalling.
const bufferSize = 1000

// Signal carries values of type T from the code under test to a test.
// The zero value is off.
type Signal[T any] struct {
	ch chan T
}

// Init turns the signal on. Call it before the component starts.
func (s *Signal[T]) Init() { s.ch = make(chan T, bufferSize) }

// Signal sends v to the test if the signal is on; it never blocks.
func (s *Signal[T]) Signal(v T) {
	if s.ch == nil {
		return
	}
	select {
	case s.ch <- v:
	default:
		panic("testsignal: buffer full: a test inits a signal it does not read")
	}
}

// WaitOrTimeout returns the next signalled value, failing the test after
// testutil.WaitTimeout.
func (s *Signal[T]) WaitOrTimeout(tb testutil.TB) T {
	tb.Helper()
	s.mustInit(tb)
	return testutil.WaitOrTimeout(tb, s.ch)
}

// WaitFor skips signalled values until one satisfies match and returns it,
// failing the test if none comes within testutil.WaitTimeout.
func (s *Signal[T]) WaitFor(tb testutil.TB, what string, match func(T) bool) T {
	tb.Helper()
	s.mustInit(tb)
	timer := time.NewTimer(testutil.WaitTimeout())
	defer timer.Stop()
	for {
		select {
		case v := <-s.ch:
			if match(v) {
				return v
			}
		case <-timer.C:
			tb.Fatalf("waited %s for %s", testutil.WaitTimeout(), what)
			var zero T
			return zero
		}
	}
}

// RequireEmpty fails the test if a value was signalled and not read.
func (s *Signal[T]) RequireEmpty(tb testutil.TB) {
	tb.Helper()
	s.mustInit(tb)
	select {
	case v := <-s.ch:
		tb.Fatalf("unexpected signal: %v", v)
	default:
	}
}

// C is the channel of signalled values, for a test that selects on
// several things at once.
func (s *Signal[T]) C() <-chan T { return s.ch }

func (s *Signal[T]) mustInit(tb testutil.TB) {
	if s.ch == nil {
		tb.Helper()
		tb.Fatalf("testsignal: wait on a signal that was not Init")
	}
}
