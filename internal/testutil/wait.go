// Package testutil holds what every package's tests share: one wait
// timeout, scaled for the race detector and for CI, and waits on channels
// and conditions bounded by it.
//
// Tests wait for the event that proves what they check (a test signal, a
// message, a state the code wrote), never for a clock: the timeout only
// bounds how long a test that is going to fail takes to say so, so it is
// generous, and it is the same everywhere.
package testutil

import (
	"os"
	"strconv"
	"time"
)

// TB is the part of testing.TB the waits use (an interface of its own, so
// that code compiled with test signals does not link package testing).
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// baseWaitTimeout bounds a wait on an otherwise idle machine.
const baseWaitTimeout = 10 * time.Second

// WaitTimeout is how long a test waits for an event before it fails: 10 s,
// doubled under the race detector (code runs several times slower) and
// again in CI (a shared, loaded machine). ATELIER_TEST_WAIT_SCALE (a
// number) multiplies it further, for a very slow machine.
func WaitTimeout() time.Duration {
	d := baseWaitTimeout
	if RaceEnabled {
		d *= 2
	}
	if os.Getenv("CI") != "" {
		d *= 2
	}
	if s := os.Getenv("ATELIER_TEST_WAIT_SCALE"); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f > 0 {
			d = time.Duration(float64(d) * f)
		}
	}
	return d
}

// WaitOrTimeout returns the next value from ch, failing the test if none
// comes within WaitTimeout.
func WaitOrTimeout[T any](tb TB, ch <-chan T) T {
	tb.Helper()
	timer := time.NewTimer(WaitTimeout())
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		tb.Fatalf("no value after %s", WaitTimeout())
	}
	var zero T
	return zero
}

// WaitClosed waits for ch to be closed (or to yield a value), failing the
// test after WaitTimeout with what it waited for.
func WaitClosed[T any](tb TB, ch <-chan T, what string) {
	tb.Helper()
	timer := time.NewTimer(WaitTimeout())
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		tb.Fatalf("waited %s for %s", WaitTimeout(), what)
	}
}

// pollInterval is how often Eventually looks again.
const pollInterval = 10 * time.Millisecond

// Eventually waits until cond holds, failing the test with msg after
// WaitTimeout. Use it for state that no event announces (a file another
// process writes, a port a child process opens); where the code under
// test can signal, wait on the signal instead.
func Eventually(tb TB, cond func() bool, msg string, args ...any) {
	tb.Helper()
	deadline := time.Now().Add(WaitTimeout())
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: "+msg, append([]any{WaitTimeout()}, args...)...)
		}
		time.Sleep(pollInterval)
	}
}

// EventuallyNoError is Eventually for a condition that says why it does
// not hold yet: the last error is in the failure.
func EventuallyNoError(tb TB, cond func() error, msg string, args ...any) {
	tb.Helper()
	deadline := time.Now().Add(WaitTimeout())
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: %s: %v", WaitTimeout(), sprintf(msg, args...), err)
		}
		time.Sleep(pollInterval)
	}
}
