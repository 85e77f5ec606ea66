package waitctx

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWaitReturnsWhenTheWaitEnds(t *testing.T) {
	var wg sync.WaitGroup
	wg.Add(1)
	go wg.Done()
	require.NoError(t, Wait(context.Background(), wg.Wait))
}

func TestWaitReturnsWhenTheContextEnds(t *testing.T) {
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, Wait(ctx, func() { <-release }), context.Canceled)
	close(release) // the wait ends in the background
}
