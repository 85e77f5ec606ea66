package backoff

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPausesGrowToTheCap(t *testing.T) {
	b := New(Policy{Min: time.Second, Max: 5 * time.Second})
	var got []time.Duration
	for range 5 {
		got = append(got, b.Next())
	}
	require.Equal(t, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}, got)
	b.Reset()
	require.Equal(t, time.Second, b.Next())
}

func TestJitterShortensAtMostByItsFraction(t *testing.T) {
	b := New(Policy{Min: time.Second, Max: time.Second, Jitter: 0.5})
	for range 100 {
		d := b.Next()
		require.GreaterOrEqual(t, d, 500*time.Millisecond)
		require.LessOrEqual(t, d, time.Second)
	}
}

// A stop ends a pause at once, however long it is.
func TestWaitEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { done <- New(Policy{Min: time.Hour}).Wait(ctx) }()
	cancel()
	require.False(t, <-done)
}

func TestRetry(t *testing.T) {
	ctx := context.Background()
	p := Policy{Min: time.Microsecond}
	calls := 0
	err := Retry(ctx, p, 0, func(context.Context) error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 3, calls)

	calls = 0
	err = Retry(ctx, p, 4, func(context.Context) error { calls++; return errors.New("never") })
	require.EqualError(t, err, "never")
	require.Equal(t, 4, calls)

	calls = 0
	bad := errors.New("bad request")
	err = Retry(ctx, p, 0, func(context.Context) error { calls++; return Permanent(bad) })
	require.ErrorIs(t, err, bad)
	require.Equal(t, 1, calls)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err = Retry(cctx, Policy{Min: time.Hour}, 0, func(context.Context) error { return errors.New("down") })
	require.ErrorIs(t, err, context.Canceled)
}
