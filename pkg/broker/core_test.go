package broker

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// do waits for its function to end even when the caller's context ends
// while the core runs it: returning early let the caller read what the
// function was still writing (Status's result, when the dashboard's poll
// timed out or stopped: a data race, and a half-built status).
func TestDoWaitsForItsFunctionPastTheContext(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx, cancel := context.WithCancel(tb.ctx)
	defer cancel()
	wrote := 0
	err := tb.broker.do(ctx, func() {
		cancel()
		// The caller's context has ended; the function is not done yet.
		time.Sleep(50 * time.Millisecond)
		wrote = 1
	})
	require.ErrorIs(t, err, errStopped, "the context ended while the function ran")
	require.Equal(t, 1, wrote, "do returned before its function ended")
}
